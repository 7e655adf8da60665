"""`clozelm heads`: the page, one head's PNG/SVG, the role report, --syntax without spaCy, bad input."""

from __future__ import annotations

import sys

from .helpers import assert_self_contained


def test_cli(minilm, tmp_path, capsys):
    from clozelm.cli import main
    path = str(minilm.info.source)
    out = tmp_path / "view.html"
    code = main(["heads", "The cat sat on the mat.", "--model", path, "-o", str(out),
                 "--png", "1.2", str(tmp_path / "h.png"), "--svg", "0.3", str(tmp_path / "h.svg"), "--word-level"])
    assert code == 0
    assert_self_contained(out.read_text())
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    assert "<svg" in (tmp_path / "h.svg").read_text()
    printed = capsys.readouterr().out
    assert "wrote" in printed and "view.html" in printed

    assert main(["heads", "--report", str(tmp_path / "roles"), "--model", path]) == 0
    assert sorted(p.name for p in (tmp_path / "roles").iterdir()) == ["heads.json", "heads.md", "heads.png"]

    for bad in (["heads", "", "--model", path], ["heads", "x", "--model", path, "--png", "9", "a.png"],
                ["heads", "x", "--model", path, "--png", "6.0", "a.png"]):
        capsys.readouterr()
        assert main(bad) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("clozelm: error:") and "\n" not in err


def test_existing_files_are_replaced_only_with_overwrite(minilm, tmp_path, capsys):
    from clozelm.cli import main
    path = str(minilm.info.source)
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    (tmp_path / "roles").mkdir()
    (tmp_path / "roles" / "heads.md").write_text("my report")
    for args in (["-o", str(mine)], ["--png", "1.2", str(mine)], ["--svg", "0.3", str(mine)],
                 ["-f", str(mine), "-o", str(mine)], ["--report", str(tmp_path / "roles")], ["--report", str(mine)],
                 ["-o", str(tmp_path)], ["-o", str(tmp_path / "missing" / "page.html")]):
        capsys.readouterr()
        assert main(["heads", *(["The cat sat."] if "-f" not in args else []), "--model", path, *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("clozelm: error:") and "\n" not in err, err
    assert mine.read_text() == "mine" and (tmp_path / "roles" / "heads.md").read_text() == "my report"
    assert not (tmp_path / "missing").exists()
    assert main(["heads", "The cat sat.", "--model", path, "-o", str(mine), "--overwrite"]) == 0
    assert mine.read_text().startswith("<!DOCTYPE html>")


def test_cli_syntax_without_spacy(monkeypatch, tmp_path, capsys):
    from clozelm.cli import main
    monkeypatch.setitem(sys.modules, "spacy", None)
    text = tmp_path / "t.txt"
    text.write_text("The cat sat on the mat.")
    assert main(["heads", "--syntax", str(text), "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clozelm: error:") and "clozelm[syntax]" in err and "\n" not in err


def test_several_maps_in_one_call_and_no_output_named_twice(minilm, tmp_path, capsys):
    from clozelm.cli import main
    path = str(minilm.info.source)
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert main(["heads", "The cat sat.", "--model", path, "--png", "0.0", str(a), "--png", "1.1", str(b)]) == 0
    assert a.read_bytes() != b.read_bytes() and a.read_bytes()[:4] == b"\x89PNG"
    assert capsys.readouterr().out.count("wrote") == 2
    same = tmp_path / "same.x"
    for argv in (["--png", "0.0", str(same), "--svg", "1.1", str(same)], ["-o", str(same), "--png", "0.0", str(same)],
                 ["--png", "0.0", str(same), "--png", "0.1", str(tmp_path / "." / "same.x")]):
        assert main(["heads", "The cat sat.", "--model", path, *argv]) == 2
        err = capsys.readouterr().err
        assert "named for two outputs" in err and err.count("\n") == 1
        assert not same.exists()  # refused before anything was written


def test_flags_that_would_be_ignored_are_refused(minilm, tmp_path, capsys):
    from clozelm.cli import main
    path = str(minilm.info.source)
    text = tmp_path / "t.txt"
    text.write_text("The cat sat on the mat.")
    for argv, fragment in ((["--report", str(tmp_path / "r"), "-o", str(tmp_path / "x.html")], "--report writes its own"),
                           (["--report", str(tmp_path / "r"), "--png", "0.0", str(tmp_path / "z.png")], "--png"),
                           (["--syntax", str(text), "The cat"], "leave out the text"),
                           (["--syntax", str(text), "--svg", "0.0", str(tmp_path / "z.svg")], "--svg"),
                           (["The cat", "--min-arcs", "3"], "--min-arcs filters the --syntax table"),
                           (["The cat", "--compare", path, "--png", "0.0", str(tmp_path / "c.png")], "add -o PAGE.html"),
                           # a head the model does not have: said before the model runs or any map is written
                           (["The cat", "--png", "0.0", str(tmp_path / "a.png"), "--png", "0.99", str(tmp_path / "b.png")],
                            "--png 0.99: ")):
        assert main(["heads", "--model", path, *argv]) == 2
        err = capsys.readouterr().err
        assert fragment in err and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists() and not (tmp_path / "x.html").exists() and not (tmp_path / "a.png").exists()


def test_the_report_reads_standard_input_when_asked_with_a_dash(minilm, tmp_path, capsys, monkeypatch):
    import io
    import json

    from clozelm.cli import main
    path = str(minilm.info.source)

    class Piped(io.StringIO):
        def isatty(self):
            return False

    text = "Tom saw Ann. Ann saw Tom. Then they went home together, and the dog followed them."
    monkeypatch.setattr("sys.stdin", Piped(text))
    assert main(["heads", "--model", path, "-", "--report", str(tmp_path / "piped"), "--json"]) == 0
    piped = json.loads(capsys.readouterr().out)
    assert main(["heads", "--model", path, text, "--report", str(tmp_path / "given"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == piped


def test_the_page_reads_at_most_max_tokens_and_says_so(minilm, tmp_path, capsys):
    from clozelm.cli import main
    path = str(minilm.info.source)
    out = tmp_path / "p.html"
    assert main(["heads", "--model", path, "one two three four five six seven eight nine ten", "--max-tokens", "6",
                 "-o", str(out)]) == 0
    captured = capsys.readouterr()
    # [CLS] and [SEP] take two of the six positions
    assert "kept the first 4 tokens" in captured.err and ", 6 tokens)" in captured.out, captured
    assert main(["heads", "--model", path, "--report", str(tmp_path / "r"), "--max-tokens", "6"]) == 2
    assert "--max-tokens" in capsys.readouterr().err
