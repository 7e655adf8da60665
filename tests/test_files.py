"""clozelm.files: which files a folder given as input stands for."""

from __future__ import annotations

import os

import pytest

from clozelm.errors import ClozelmError
from clozelm.files import expand_inputs


def test_a_folder_stands_for_its_texts_and_not_what_clozelm_wrote_there(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    for name in ("a.txt", "sub/b.md", "report.md", ".hidden.txt", "MANIFEST.json"):
        (corpus / name).write_text("text")
    run = corpus / "eval-run"  # an earlier `clozelm eval ... --out corpus/eval-run`
    run.mkdir()
    (run / "results.json").write_text("{}")
    (run / "report.md").write_text("# clozelm eval")
    (corpus / "own").mkdir()
    (corpus / "own" / "c.txt").write_text("text")
    found = expand_inputs([corpus], exclude=[corpus / "own"])
    assert [p.relative_to(corpus).as_posix() for p in found] == ["a.txt", "report.md", "sub/b.md"]
    # named on its own, a file is read whatever it is
    assert expand_inputs([run / "report.md", corpus / "MANIFEST.json"]) == [run / "report.md", corpus / "MANIFEST.json"]
    with pytest.raises(ClozelmError, match="no input files found"):
        expand_inputs([run])


def test_a_file_named_twice_is_read_once(tmp_path):
    """A folder and a file in it, the same folder twice, the same file by two spellings: each document once (read
    twice, it would be trained on twice, and one held out could be trained on in its other copy)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("a.txt", "b.txt"):
        (corpus / name).write_text("text")
    once = expand_inputs([corpus])
    assert expand_inputs([corpus, corpus]) == once
    assert expand_inputs([corpus, corpus / "b.txt"]) == once
    assert expand_inputs([corpus / "b.txt", corpus, tmp_path / "corpus" / ".." / "corpus" / "a.txt"]) == \
        [corpus / "b.txt", corpus / "a.txt"]


@pytest.mark.parametrize("marker", ["run.json", "config.json", "vocab.json", "encoder.json", "tokenizer.json",
                                    "study.json"])
def test_a_folder_holding_a_model_a_tokenizer_or_a_run_is_not_text(tmp_path, marker):
    """A run trained into its corpus folder leaves merges.txt, vocab.bpe, metrics.csv and train.lock there: none
    is a document, whatever its name, and neither is anything below that folder."""
    corpus = tmp_path / "corpus"
    run = corpus / "runs" / "small"
    (run / "model").mkdir(parents=True)
    (corpus / "a.txt").write_text("text")
    (run / marker).write_text("{}")
    for name in ("merges.txt", "vocab.bpe", "metrics.csv", "train.lock", "model/merges.txt"):
        (run / name).write_text("not text")
    assert expand_inputs([corpus]) == [corpus / "a.txt"]
    with pytest.raises(ClozelmError, match=f"no input files found in {run}.*{run} holds a model"):
        expand_inputs([run])
    assert expand_inputs([run / "merges.txt"]) == [run / "merges.txt"]  # named on its own, it is read


def test_a_pipe_is_read_up_to_a_limit(tmp_path, monkeypatch):
    """`-f /dev/stdin` or `<(command)` is a pipe, which may never end (`yes |`): read up to a limit, then refused."""
    import threading
    from clozelm import files
    monkeypatch.setattr(files, "STREAM_LIMIT", 1000)
    for size, ok in ((900, True), (5000, False)):
        fifo = tmp_path / f"fifo{size}"
        os.mkfifo(fifo)
        writer = threading.Thread(target=lambda f=fifo, n=size: _write_ignoring_a_closed_reader(f, b"a" * n))
        writer.start()
        if ok:
            assert files.read_text_file(fifo, "text") == "a" * size
        else:
            with pytest.raises(ClozelmError, match="holds more than"):
                files.read_text_file(fifo, "text")
        writer.join()


def _write_ignoring_a_closed_reader(path, data):
    try:
        with open(path, "wb") as f:
            f.write(data)
    except BrokenPipeError:
        pass
