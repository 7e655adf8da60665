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
