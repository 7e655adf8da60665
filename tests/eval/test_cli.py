"""`clozelm eval` end to end on tiny saved models: the figures, --json, --out, and one-line errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

import clozelm
from clozelm.cli import main
from clozelm.loaded import Model, ModelInfo
from clozelm.model import ModelConfig, Transformer

from .conftest import SENTENCES

TEXT = "the dog ran home. the cat sat down.\n"


@pytest.fixture(scope="module")
def saved(tok, tmp_path_factory):
    """A tiny causal and a tiny masked model, random weights, saved as clozelm saves any model."""
    out = {}
    for objective, causal in (("clm", True), ("mlm", False)):
        torch.manual_seed(1)
        config = ModelConfig(vocab_size=tok.vocab_size, n_positions=32, n_embd=16, n_layer=1, n_head=2,
                             causal=causal, pre_ln=causal, head="tied" if causal else "mlm")
        directory = tmp_path_factory.mktemp(objective)
        Model(Transformer(config), tok, ModelInfo(objective=objective)).save_pretrained(directory, overwrite=True)
        out[objective] = directory
    return out


def held_out(tmp_path):
    path = tmp_path / "held-out.txt"
    path.write_text(TEXT)
    return path


def test_causal_ppl_matches_one_forward_pass(saved, tmp_path, capsys):
    path = held_out(tmp_path)
    out = tmp_path / "report"
    assert main(["eval", str(saved["clm"]), str(path), "--tasks", "ppl,pairs", "--limit", "14", "--json",
                 "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["model"] == str(saved["clm"]) and printed["seed"] == 0 and list(printed["tasks"]) == ["ppl", "pairs"]
    # The text fits the context: one forward pass scores it (by hand, outside clozelm.eval).
    model = clozelm.load(saved["clm"])
    tok = model.tokenizer
    ids = [tok.eos_id, *tok.encode(TEXT)]
    with torch.no_grad():
        logp = model.network(torch.tensor([ids])).logits[0].double().log_softmax(-1)
    nll = -sum(float(logp[i, ids[i + 1]]) for i in range(len(ids) - 1))
    ppl = printed["tasks"]["ppl"]
    assert ppl["bits_per_byte"] == pytest.approx(nll / math.log(2) / len(TEXT.encode()), rel=1e-5)
    assert ppl["token_perplexity"] == pytest.approx(math.exp(nll / (len(ids) - 1)), rel=1e-5)
    assert printed["tasks"]["pairs"]["n"] == 14 * 7  # 14 of each phenomenon
    assert json.loads((out / "results.json").read_text()) == printed
    report = (out / "report.md").read_text()
    assert report.startswith("# clozelm eval") and "bits per byte" in report

    # the same --out again: refused, nothing overwritten; --overwrite replaces
    before = (out / "results.json").read_text()
    assert main(["eval", str(saved["clm"]), str(path), "--tasks", "ppl", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clozelm: error:") and "--overwrite" in err and "\n" not in err
    assert (out / "results.json").read_text() == before
    assert main(["eval", str(saved["clm"]), str(path), "--tasks", "ppl", "--out", str(out), "--overwrite"]) == 0
    assert list(json.loads((out / "results.json").read_text())["tasks"]) == ["ppl"]


def test_causal_ppl_over_many_windows_is_the_sliding_window_by_hand(saved, tmp_path, capsys):
    # A text of several contexts: windows end `stride` tokens apart, each scoring the tokens after the previous
    # window's end with everything before them in its window (transformers' documented recipe for fixed-length
    # models), computed here outside clozelm.eval on the real network.
    text = " ".join([TEXT.strip()] * 10) + "\n"
    path = tmp_path / "long.txt"
    path.write_text(text)
    assert main(["eval", str(saved["clm"]), str(path), "--tasks", "ppl", "--stride", "8", "--json"]) == 0
    ppl = json.loads(capsys.readouterr().out)["tasks"]["ppl"]
    model = clozelm.load(saved["clm"])
    ids = [model.tokenizer.eos_id, *model.tokenizer.encode(text)]
    width, stride = model.config.n_positions, 8
    assert len(ids) > 3 * width
    nll, scored = 0.0, 1  # position 0, the start token, is no target
    for end in range(width, len(ids) + stride, stride):
        end, begin = min(end, len(ids)), max(0, min(end, len(ids)) - width)
        with torch.no_grad():
            logp = model.network(torch.tensor([ids[begin:end]])).logits[0].double().log_softmax(-1)
        nll -= sum(float(logp[p - 1 - begin, ids[p]]) for p in range(scored, end))
        scored = end
        if end == len(ids):
            break
    assert scored == len(ids) and ppl["tokens"] == len(ids) - 1
    assert ppl["bits_per_byte"] == pytest.approx(nll / math.log(2) / len(text.encode()), rel=1e-5)


def test_masked_model_table(saved, tmp_path, capsys):
    path = held_out(tmp_path)
    assert main(["eval", str(saved["mlm"]), str(path), "--tasks", "ppl", "--samples", "4"]) == 0
    table = capsys.readouterr().out
    assert "bits per byte (upper bound)" in table and "NOT a likelihood" in table and "±" in table


def test_every_task(saved, tmp_path, capsys):
    path = held_out(tmp_path)
    path.write_text("the dog ran home, the cat sat down and a bird flew away.\n\n" * 3)
    lambada = tmp_path / "lambada.jsonl"
    lambada.write_text("".join(json.dumps({"text": s}) + "\n" for s in SENTENCES[:3]))
    topics = tmp_path / "topics"
    for label, words in (("a", "the dog ran home"), ("b", "a bird flew away")):
        (topics / label).mkdir(parents=True)
        for i in range(5):
            (topics / label / f"{i}.txt").write_text(" ".join([words] * (i + 1)))  # no two alike
    for objective in ("clm", "mlm"):
        assert main(["eval", str(saved[objective]), str(path), "--tasks", "all", "--limit", "4", "--lambada",
                     str(lambada), "--probe", str(topics), "--folds", "2", "--json"]) == 0
        tasks = json.loads(capsys.readouterr().out)["tasks"]
        assert list(tasks) == ["ppl", "lastword", "cloze", "pairs", "probe"]
        assert tasks["lastword"]["n"] == 3 and tasks["probe"]["n"] == 4 and tasks["pairs"]["n"] == 4 * 7
        assert ("left_only_accuracy" in tasks["lastword"]) == (objective == "clm")


@pytest.mark.parametrize("args,message", [
    (["missing.txt", "--tasks", "ppl"], "missing.txt: no such file"),
    (["--tasks", "ppl"], "ppl needs text: give FILES"),
    (["--tasks", "lastword"], "--lambada"),
    (["--tasks", "nonsense"], "unknown task 'nonsense'"),
    (["--tasks", "lastword", "--lambada", "LAMBADA"], ":1: not a JSON object"),
    (["--tasks", "pairs", "--pairs", "NOFILE"], "not found"),
    (["--tasks", "probe", "--probe", "NOFILE"], "probe folder not found"),
    (["--seed", "-1"], "--seed"),
    # options of a task that does not run, or of a model of the other kind, would be ignored without a word
    (["HELDOUT", "--tasks", "ppl", "--folds", "3"], "--folds is read by the probe task"),
    (["--tasks", "pairs", "--stride", "8"], "--stride is read by the ppl task"),
    (["--tasks", "pairs", "--samples", "4"], "--samples is read by the ppl task"),
    (["HELDOUT", "--tasks", "ppl", "--pair-samples", "4"], "--pair-samples is read by the pairs task"),
    (["HELDOUT", "--tasks", "ppl", "--samples", "4"], "--samples shapes a masked model's figures"),
    (["HELDOUT", "--tasks", "ppl", "--pll-tokens", "0"], "is causal and scored exactly"),
    (["HELDOUT", "--tasks", "ppl", "--limit", "5"], "--limit is read by the lastword, cloze, pairs and probe tasks"),
    (["HELDOUT", "--folds", "3"], "--folds is read by the probe task"),  # the tasks run by default leave it out
    (["--tasks", "pairs", "--pair-samples", "4"], "shapes the masked-diffusion bound, and this model's pairs are "
                                                  "scored by log-probability"),
    (["HELDOUT", "--tasks", "ppl", "--overwrite"], "--overwrite replaces results.json and report.md in --out DIR"),
])
def test_bad_input_is_one_line(saved, tmp_path, capsys, args, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    args = [a.replace("LAMBADA", str(bad)).replace("NOFILE", str(tmp_path / "nothing"))
            .replace("HELDOUT", str(held_out(tmp_path))) for a in args]
    assert main(["eval", str(saved["clm"]), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clozelm: error:") and message in err and "\n" not in err, err


def test_a_model_that_is_not_there(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "no-model"), "--tasks", "pairs"]) == 2
    assert capsys.readouterr().err.startswith("clozelm: error:")


def test_an_out_folder_that_cannot_be_made_is_refused_before_the_work(saved, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    assert main(["eval", str(saved["clm"]), str(held_out(tmp_path)), "--tasks", "ppl", "--out",
                 str(blocker / "report")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"clozelm: error: {blocker} is a file, so") and "\n" not in err and blocker.read_text() == "mine"
    # a run that fails leaves no empty folder of its own behind
    assert main(["eval", str(tmp_path / "no-model"), "--tasks", "pairs", "--out", str(tmp_path / "new" / "a" / "b")]) == 2
    assert not (tmp_path / "new").exists()  # nor the folders above it that it made


def test_the_help_gives_the_options_own_defaults(capsys):
    from clozelm.eval import EvalOptions

    assert main(["eval", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    defaults = EvalOptions()
    for flag, value in (("--samples", defaults.samples), ("--pair-samples", defaults.pair_samples),
                        ("--pll-tokens", defaults.pll_tokens), ("--folds", defaults.folds)):
        assert f"(default: {value})" in text.split(flag, 2)[2].split(" --", 1)[0], flag
