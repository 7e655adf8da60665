"""The `clozelm` entry point itself: what every command shares (interrupts, notes said before long work)."""

from __future__ import annotations

import clozelm.cli
from clozelm.cli import main

from .test_fill_generate import model_dir  # noqa: F401 (a fixture)


def test_ctrl_c_while_the_commands_load_is_an_interrupt_not_a_traceback(monkeypatch, capsys):
    """Building the parser imports every command and torch with them: the first seconds of any command."""
    def interrupted():
        raise KeyboardInterrupt
    monkeypatch.setattr(clozelm.cli, "build_parser", interrupted)
    assert main(["--help"]) == 130
    assert capsys.readouterr().err == "clozelm: interrupted\n"


def test_fill_says_first_that_many_answers_over_several_blanks_take_long(model_dir, capsys):  # noqa: F811
    for args, said in ((["the ___ sat on the ___", "--top", "9"], True), (["the ___ sat on the ___", "--top", "8"], False),
                       (["the ___ sat on the mat", "--top", "9"], False)):
        assert main(["fill", *args, "--model", str(model_dir)]) == 0
        err = capsys.readouterr().err
        assert ("9 partial answers are carried from one blank to the next" in err) is said, err


def test_a_special_token_spelled_as_plain_text_is_pointed_out(tmp_path, capsys):
    """Special tokens match anywhere in a text, inside words too: `--special the` would split "there"."""
    (tmp_path / "a.txt").write_text("there is the other bathe\n" * 20)
    for special, said in (("the", True), ("MASK 2", True), ("<|mask|>", False), ("[MASK]", False)):
        out = tmp_path / f"tok-{len(special)}-{said}"
        assert main(["tokenizer", "train", str(tmp_path / "a.txt"), "--vocab-size", "280", "--special", special,
                     "--out", str(out)]) == 0
        err = capsys.readouterr().err
        assert (f"special token {special!r} is plain text" in err) is said, err
