"""`clozelm serve` (cli.py): starts, answers, stops on Ctrl-C; bad options and models are one line, exit 2."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys

import pytest


@pytest.mark.parametrize("options", [[], ["--dtype", "int8", "--no-compile"]], ids=["default", "int8-no-compile"])
def test_serve_command_starts_answers_and_stops_on_ctrl_c(model_dirs, options):
    """By default the generations decode through compiled steps, compiled before the server says it serves, unless
    the one-call step serves the model (model/native_step.py), which compiles nothing."""
    import clozelm
    from clozelm.generation import compiled_by_default
    from clozelm.model import native_step
    from clozelm.model.step import compiler_available
    compiles = "--no-compile" not in options and compiler_available() and compiled_by_default() and not (
        native_step.serves(clozelm.load(model_dirs[0]).network))
    process = subprocess.Popen([sys.executable, "-m", "clozelm", "serve", "--model", str(model_dirs[0]),
                                "--compare", "none", "--port", "0", "--quiet", *options],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        line = process.stdout.readline()
        match = re.search(r"on http://127\.0\.0\.1:(\d+)/", line)
        assert match, line + process.stderr.read()
        conn = http.client.HTTPConnection("127.0.0.1", int(match.group(1)), timeout=30)
        conn.request("GET", "/api/models")
        data = json.loads(conn.getresponse().read())
        conn.close()
        assert [(m["label"], m["compiled_steps"]) for m in data["models"]] == [("causal/model", compiles)]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=15) == 0
        errors = process.stderr.read()
        assert "stopped" in errors and "Traceback" not in errors, errors
        assert ("compiling the decoding steps of causal/model" in errors) == compiles, errors
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_command_errors_are_one_line():
    r = subprocess.run([sys.executable, "-m", "clozelm", "serve", "--model", "./no/such/model", "--port", "0"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "no such file" in r.stderr, r.stderr



NUMERIC_OPTIONS = [("--timeout", "inf"), ("--timeout", "nan"), ("--timeout", "-inf"), ("--timeout", "0"),
                   ("--timeout", "1e400"), ("--timeout", "-5"), ("--workers", "0"), ("--workers", "1.5"),
                   ("--queue", "-1"), ("--queue", "9" * 5000), ("--max-text", "nan"), ("--max-text", "0"),
                   ("--port", "65536"), ("--port", "-1"), ("--port", "")]


@pytest.mark.parametrize("option,value", NUMERIC_OPTIONS, ids=[f"{o} {v[:8]}" for o, v in NUMERIC_OPTIONS])
def test_serve_refuses_numeric_options_that_mean_nothing_in_one_line(capsys, option, value):
    from clozelm.cli import main
    try:
        code = main(["serve", "--model", "./no/such/model", option, value])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert err.strip().count("\n") == 0 and option in err, err


def test_serve_timeout_inf_exits_2_with_one_line():
    r = subprocess.run([sys.executable, "-m", "clozelm", "serve", "--timeout", "inf", "--port", "0"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--timeout" in r.stderr, r.stderr


def test_a_larger_max_text_raises_the_body_limit_with_it(model_dirs, monkeypatch):
    # A text of --max-text characters, as JSON, may take 4 bytes a character: the body limit follows it
    import clozelm.server.app as app
    from clozelm.cli import main

    seen = {}

    def make_server(models, limits, **_):
        seen["limits"] = limits
        raise KeyboardInterrupt  # stop before serving

    monkeypatch.setattr(app, "make_server", make_server)
    main(["serve", "--model", str(model_dirs[0]), "--compare", "none", "--port", "0", "--max-text", "50000"])
    assert seen["limits"].max_text == 50000 and seen["limits"].max_body >= 4 * 50000
