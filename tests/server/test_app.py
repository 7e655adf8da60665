"""The server put together (app.py): which models' generations decode through compiled steps, compiled before the
first request; the rest of the server is tested through its endpoints and its HTTP layer."""

from __future__ import annotations

import json

import pytest
import torch

import clozelm
from clozelm.errors import ClozelmError
from clozelm.model import packed, step
from clozelm.server import make_server

from .helpers import call, running

@pytest.fixture(scope="module")
def int8_models(model_dirs):
    return {"causal": clozelm.load(model_dirs[0], dtype="int8"), "bidi": clozelm.load(model_dirs[1], dtype="int8")}


def streamed(server, body: dict) -> str:
    status, _, raw = call(server, "POST", "/api/generate", body)
    assert status == 200, raw
    lines = [json.loads(line) for line in raw.splitlines()]
    assert lines[-1].get("done") is True, lines[-1]
    return "".join(line["text"] for line in lines[1:-1])


def test_a_server_compiles_its_int8_generating_model_before_the_first_request_and_streams_through_it(
        int8_models, monkeypatch):
    monkeypatch.setenv("CLOZELM_NATIVE_STEP", "0")  # else, where native.c runs, its one-call step serves the model
    with running(int8_models, compile=True) as server:
        assert server.compiled == {"causal"}  # the masked model does not generate
        server.compile_steps()
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        calls = []
        run = step.run
        monkeypatch.setattr(step, "run", lambda *a: calls.append(1) or run(*a))
        sampled = {"temperature": 0.8, "seed": 1}  # sampling drafts nothing: every token a one-token step
        text = streamed(server, {"text": "the cat", "max_tokens": 6, **sampled})
        assert len(calls) == 5 and torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs  # nothing new
        assert text == clozelm.generate("the cat", model=int8_models["causal"], max_new_tokens=6, compile=True,
                                        **sampled)
        status, _, info = call(server, "GET", "/api/models")
        assert [m["compiled_steps"] for m in info["models"]] == [True, False]
        calls.clear()
        assert streamed(server, {"text": "the cat", "max_tokens": 6, "beams": 2})  # a beam search reads rows eagerly
        assert not calls and not step._failure


def test_compiled_steps_are_chosen_where_a_model_allows_them_and_refused_where_asked_for_in_vain(
        models, int8_models, monkeypatch):
    monkeypatch.setenv("CLOZELM_NATIVE_STEP", "0")  # where it serves a model, nothing compiles (below)
    monkeypatch.setattr(packed, "has_amx", lambda: False)
    with running(models, compile=None) as server:  # fp32 weights: compiled reductions over the weights themselves
        assert server.compiled == ({"causal"} if step.compiler_available() else frozenset())
    monkeypatch.setattr(packed, "has_avx512", lambda: False)  # AVX2 alone: inductor's int8 steps measured slower
    monkeypatch.setattr(packed, "native_products", lambda kind=None: False)
    with running(int8_models, compile=None) as server:
        assert server.compiled == frozenset()
    monkeypatch.setattr(packed, "native_products", lambda kind=None: True)  # graphs calling native.c: faster
    with running(int8_models, compile=None) as server:
        assert server.compiled == ({"causal"} if step.compiler_available() else frozenset())
    monkeypatch.setattr(packed, "has_avx512", lambda: True)
    with running(int8_models, compile=None) as server:
        assert server.compiled == ({"causal"} if step.compiler_available() else frozenset())
    monkeypatch.setattr(packed, "has_amx", lambda: True)  # not yet measured there
    with running(models, compile=None) as server:
        assert server.compiled == frozenset()
    with running(int8_models, compile=False) as server:
        assert server.compiled == frozenset()
    with pytest.raises(ClozelmError, match="none of the models served can generate"):
        make_server({"bidi": int8_models["bidi"]}, port=0, compile=True)
    monkeypatch.setattr(step.shutil, "which", lambda name: None)
    with pytest.raises(ClozelmError, match="^causal: compiled decoding steps need a C\\+\\+ compiler"):
        make_server(models, port=0, compile=True)


def test_serve_compile_where_it_cannot_run_is_one_line_and_exit_2(model_dirs, capsys):
    from clozelm.cli import main
    code = main(["serve", "--model", str(model_dirs[1]), "--compare", "none", "--port", "0", "--compile"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().count("\n") == 0 and "none of the models served can generate" in err, err


def test_after_a_failed_compile_the_server_streams_without_compiled_steps(int8_models, monkeypatch):
    with running(int8_models, compile=True) as server:
        monkeypatch.setattr(step, "_failure", ["RuntimeError: inductor: cannot find Python.h"])
        server.compile_steps()  # a server starting after a failure: nothing to compile, and no error
        assert streamed(server, {"text": "the cat", "max_tokens": 4})  # eager, not an error for every request
        status, _, info = call(server, "GET", "/api/models")
        assert [m["compiled_steps"] for m in info["models"]] == [False, False]
