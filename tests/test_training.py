"""clozelm train: token shards, the three objectives, the loop, checkpoints (real SIGKILL + resume),
Ctrl-C, NaN stop, CLI errors. Tiny models (2 layers x 32) on a generated corpus, so it all runs in seconds.
"""

from __future__ import annotations

import json
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import clozelm
from clozelm.cli import main
from clozelm.cloze import method_for
from clozelm.errors import ClozelmError
from clozelm.tokenizers import load_tokenizer, train_bpe
from clozelm.training.data import CorpusFiles, build_token_cache, token_dtype
from clozelm.training.objectives import IGNORE, make_objective
from clozelm.training.plot import loss_curve_png
from clozelm.model import ModelConfig, Transformer
from clozelm.training.objectives import MaskedLM
from clozelm.training.trainer import TrainConfig, Trainer, locality_bias, logits_and_labels, lr_at

SPECIALS = ["<|endoftext|>", "<|mask|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"]
TINY = ["--n-layer", "2", "--n-embd", "32", "--n-head", "2", "--n-positions", "32", "--batch-size", "4",
        "--no-progress"]
# One thread: with other work on the machine, OpenMP threads that spin-wait for each other slow tiny models 10x.
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

ADJ = "big small red green quick lazy old young happy sad".split()
NOUN = "cat dog bird fox horse mouse king queen farmer baker".split()
VERB = "sees chases likes finds meets follows helps calls".split()
PLACE = "river hill barn garden market castle".split()


def documents(n: int, seed: int = 0) -> list[str]:
    """Little documents from a toy grammar: real structure for a tiny model to learn quickly."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        sentences = [f"The {rng.choice(ADJ)} {rng.choice(NOUN)} {rng.choice(VERB)} the {rng.choice(ADJ)} "
                     f"{rng.choice(NOUN)} near the {rng.choice(PLACE)}." for _ in range(rng.randint(3, 8))]
        docs.append(" ".join(sentences))
    return docs


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    (root / "a.txt").write_text("\n\n".join(documents(200, seed=1)) + "\n", encoding="utf-8")
    (root / "b.txt").write_text("\n\n".join(documents(200, seed=2)) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory, corpus) -> Path:
    out = tmp_path_factory.mktemp("bpe")
    train_bpe(sorted(corpus.glob("*.txt")), 320, special_tokens=SPECIALS).save(out)
    return out


@pytest.fixture(scope="module")
def tok(bpe_dir):
    return load_tokenizer(bpe_dir)


def cli(argv, capsys) -> tuple[int, str]:
    """`clozelm train ARGV` in this process: (exit status, stderr)."""
    rc = main(["train", *map(str, argv)])
    return rc, capsys.readouterr().err


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def losses(run: Path) -> dict[int, float]:
    out = {}
    for r in metrics(run):
        if "loss" in r:
            assert r["step"] not in out, f"step {r['step']} logged twice"
            out[r["step"]] = r["loss"]
    return out


def child(argv, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "clozelm", *map(str, argv)], env={**CHILD_ENV, **kw.pop("env", {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def wait_for_line(proc: subprocess.Popen, marker: str, timeout: float = 90) -> list[str]:
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if marker in line:
                return seen
    finally:
        timer.cancel()
    raise AssertionError(f"{marker!r} never appeared; stderr:\n{''.join(seen)}")


# ---------------------------------------------------------------- data


def test_token_cache_shards_split_and_reuse(tmp_path, corpus, tok):
    logs = []
    corpus_files = CorpusFiles(sorted(corpus.glob("*.txt")), None, valid_every=10)
    data = build_token_cache(tmp_path / "tokens", corpus_files, tok, log=logs.append)
    assert data.meta["dtype"] == token_dtype(tok.vocab_size).str == "<u2"
    assert isinstance(data.train.shards[0], np.memmap)
    assert data.meta["documents"] == {"train": 360, "valid": 40}  # every 10th of 400 documents
    eot = tok.special_tokens["<|endoftext|>"]
    train = np.concatenate(data.train.shards)
    assert int((train == eot).sum()) == 360 and train[-1] == eot
    docs = documents(200, seed=1) + documents(200, seed=2)
    first_train_doc = tok.decode(train[:int(np.argmax(train == eot))].tolist())
    assert first_train_doc == docs[1]  # document 0 went to the held-out split
    valid = np.concatenate(data.valid.shards)
    assert tok.decode(valid[:int(np.argmax(valid == eot))].tolist()) == docs[0]

    again = build_token_cache(tmp_path / "tokens", corpus_files, tok, log=logs.append)
    assert again.key == data.key and sum("tokenizing" in m for m in logs) == 1  # reused, not re-tokenized
    other = build_token_cache(tmp_path / "tokens", CorpusFiles(corpus_files.train, None, 20), tok, log=logs.append)
    assert other.key != data.key


def test_windows_cover_every_token_once(tmp_path, corpus, tok):
    data = build_token_cache(tmp_path / "t", CorpusFiles([corpus / "a.txt"], None, 0), tok, log=lambda m: None)
    w = data.train.windows(33, 32)  # causal: T+1 tokens, stride T
    tokens = np.asarray(data.train.shards[0])
    assert len(w) == (len(tokens) - 33) // 32 + 1
    assert np.array_equal(w[1], tokens[32:65]) and w[0][-1] == w[1][0]


# ---------------------------------------------------------------- objectives


def test_clm_batch_is_shifted(tok):
    obj = make_objective("clm", tok, tok.vocab_size)
    window = np.arange(10, 43)
    x, y = obj.batch([window], [np.random.default_rng(0)])
    assert x.shape == y.shape == (1, 32)
    assert torch.equal(x[0], torch.arange(10, 42)) and torch.equal(y[0], torch.arange(11, 43))


@pytest.mark.parametrize("rate", [0.15, 0.4])
def test_mlm_exact_rate_and_80_10_10(tok, rate):
    obj = make_objective("mlm", tok, tok.vocab_size, mask_rate=rate)
    special = set(tok.special_tokens.values())
    mask = tok.special_tokens["<|mask|>"]
    rng = np.random.default_rng(0)
    ordinary = np.array(sorted(set(range(tok.vocab_size)) - special))
    counts = {"mask": 0, "random": 0, "same": 0}
    for i in range(2000):
        window = rng.choice(ordinary, size=64)
        window[rng.choice(64, size=rng.integers(0, 6), replace=False)] = tok.special_tokens["<|endoftext|>"]
        x, y = obj.example(window, np.random.default_rng([5, i]))
        chosen = np.flatnonzero(y != IGNORE)
        n_ordinary = int(sum(t not in special for t in window))
        assert len(chosen) == max(1, int(rate * n_ordinary + 0.5))  # exactly the rate, rounded
        assert not any(window[chosen[k]] in special for k in range(len(chosen)))  # specials never chosen
        assert np.array_equal(y[chosen], window[chosen])
        assert np.array_equal(x[y == IGNORE], window[y == IGNORE])  # the rest untouched
        for p in chosen:
            if x[p] == mask:
                counts["mask"] += 1
            elif x[p] == window[p]:
                counts["same"] += 1
            else:
                counts["random"] += 1
                assert x[p] not in special
    total = sum(counts.values())
    assert abs(counts["mask"] / total - 0.8) < 0.015
    # "same" also catches random draws that hit the original token (1 in ~315 here)
    assert abs(counts["random"] / total - 0.1) < 0.01 and abs(counts["same"] / total - 0.1) < 0.01


def test_mlm_at_least_one_and_none_without_ordinary_tokens(tok):
    obj = make_objective("mlm", tok, tok.vocab_size)
    eot = tok.special_tokens["<|endoftext|>"]
    window = np.array([eot] * 30 + [100, 101])
    x, y = obj.example(window, np.random.default_rng(0))
    assert int((y != IGNORE).sum()) == 1
    x, y = obj.example(np.full(32, eot), np.random.default_rng(0))
    assert int((y != IGNORE).sum()) == 0


def _unfim(seq, pre, suf, mid):
    """Invert one FIM document: PSM or SPM back to the original order."""
    seq = list(seq)
    assert seq[0] == pre
    if seq[1] == suf:  # SPM: pre suf S mid P M
        m = seq.index(mid)
        suffix, rest = seq[2:m], seq[m + 1:]
        return rest + suffix, "spm"  # (prefix + middle) + suffix
    s, m = seq.index(suf), seq.index(mid)
    return seq[1:s] + seq[m + 1:] + seq[s + 1:m], "psm"


def _restore(out, window, pre, suf, mid, eot):
    """Undo FIM stretch by stretch: (the original tokens covered, positions of the separators that close a
    middle, how many original tokens were in reordered stretches)."""
    out, restored, closes, reordered, i = list(out), [], [], 0, 0
    while i < len(out):
        if out[i] != pre:
            restored.append(out[i])
            i += 1
            continue
        assert eot in out[i:], "a middle was cut off"
        j = out.index(eot, i)
        body, _ = _unfim(out[i:j], pre, suf, mid)
        restored += body
        reordered += len(body)
        closes.append(j)
        if len(restored) < len(window) and window[len(restored)] == eot:
            restored.append(eot)  # the stretch ended its document: one separator does both jobs
        i = j + 1
    return restored, closes, reordered


def test_fim_sentinels_and_reconstructable_order(tok):
    obj = make_objective("fim", tok, tok.vocab_size)
    pre, suf, mid = (tok.special_tokens[t] for t in ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"))
    eot = tok.special_tokens["<|endoftext|>"]
    rng = np.random.default_rng(1)
    for i in range(1500):  # short documents, the last one cut by the window
        docs = [rng.integers(0, 200, size=rng.integers(1, 20)) for _ in range(3)]
        window = np.concatenate([np.append(d, eot) for d in docs] + [rng.integers(0, 200, size=5)])
        out = obj.transform(window, np.random.default_rng([9, i]))
        assert len(out) == len(window)
        restored, closes, _ = _restore(out, window, pre, suf, mid, eot)
        assert restored == list(window[:len(restored)])
        assert len(restored) >= len(window) - 4 * len(closes)  # only the sentinels' room is given up
        x, y = obj.example(window, np.random.default_rng([9, i]))
        assert len(x) == len(y) == len(window) - 1
        assert np.array_equal(x[1:], y[:-1])
    # One long document, as in a corpus of chapters: half its text is reordered, and middles end all over the
    # window, so the model must learn to close a middle from the text, not from the position.
    ends, reordered, total = [], 0, 0
    for i in range(400):
        window = rng.integers(0, 200, size=257)
        restored, closes, moved = _restore(obj.transform(window, np.random.default_rng([5, i])), window, pre, suf, mid, eot)
        assert restored == list(window[:len(restored)])
        ends += closes
        reordered, total = reordered + moved, total + len(restored)
    assert abs(reordered / total - 0.5) < 0.06
    ends = np.array(ends)
    assert np.mean(ends < 128) > 0.2 and np.mean(ends >= 253) < 0.5  # (the last stretch is cut to fit)
    # PSM with an empty prefix reads like SPM, so measure the SPM share on long documents.
    body = np.arange(1000)
    spm = sum(obj.permute(body, np.random.default_rng([3, i]))[1] == suf for i in range(2000))
    assert abs(spm / 2000 - 0.5) < 0.04


def test_missing_special_tokens_are_named(tmp_path, corpus):
    plain = train_bpe([corpus / "a.txt"], 280, special_tokens=["<|endoftext|>"])
    with pytest.raises(ClozelmError, match=r"<\|fim_prefix\|>, <\|fim_suffix\|>, <\|fim_middle\|>"):
        make_objective("fim", plain, plain.vocab_size)
    with pytest.raises(ClozelmError, match="mask token"):
        make_objective("mlm", plain, plain.vocab_size)


# ---------------------------------------------------------------- schedule, plot


def test_warmup_then_cosine():
    cfg = TrainConfig(lr=1.0, warmup=10, steps=110, min_lr_ratio=0.1)
    assert lr_at(cfg, 0) == pytest.approx(0.1) and lr_at(cfg, 9) == pytest.approx(1.0)
    assert lr_at(cfg, 60) == pytest.approx(0.55)
    assert lr_at(cfg, 110) == pytest.approx(0.1)
    values = [lr_at(cfg, s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_loss_curve_png_is_a_valid_png():
    png = loss_curve_png([(s, 5 / s ** 0.3) for s in range(1, 200)], [(50, 2.9), (100, 2.5), (199, 2.4)], 400, 300)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", png[8:16])
    assert kind == b"IHDR" and struct.unpack(">II", png[16:24]) == (400, 300)
    idat = png.index(b"IDAT")
    size = struct.unpack(">I", png[idat - 4:idat])[0]
    raw = zlib.decompress(png[idat + 4: idat + 4 + size])
    assert len(raw) == 300 * (1 + 400 * 3)
    assert len(set(raw)) > 5  # something was drawn


# ---------------------------------------------------------------- the loop, in process


def test_loss_decreases_and_model_loads(tmp_path, corpus, bpe_dir, capsys):
    run = tmp_path / "run"
    rc, err = cli([corpus, "--tokenizer", bpe_dir, "--out", run, *TINY, "--steps", "60", "--lr", "3e-3",
                   "--eval-every", "20", "--precision", "fp32"], capsys)
    assert rc == 0, err
    loss = losses(run)
    assert sorted(loss) == list(range(1, 61))
    assert np.mean([loss[s] for s in range(51, 61)]) < 0.6 * np.mean([loss[s] for s in range(1, 6)])
    vals = [r["val_loss"] for r in metrics(run) if "val_loss" in r]
    assert len(vals) == 3 and vals[-1] < vals[0]
    for name in ("checkpoint.pt", "metrics.csv", "loss_curve.png", "run.json"):
        assert (run / name).is_file()
    assert (run / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    model = clozelm.load(run / "model")
    assert model.config.causal and model.config.extra["objective"] == "clm"
    assert model.tokenizer is not None and model.tokenizer.vocab_size == 320
    text = model.generate("The big cat", max_new_tokens=8)
    assert isinstance(text, str)


def test_grad_accumulation_matches_one_big_batch(tmp_path, corpus, bpe_dir, capsys):
    common = [corpus, "--tokenizer", bpe_dir, *TINY, "--steps", "6", "--precision", "fp32", "--seed", "4"]
    rc, err = cli([*common, "--out", tmp_path / "big", "--batch-size", "8"], capsys)
    assert rc == 0, err
    rc, err = cli([*common, "--out", tmp_path / "acc", "--batch-size", "4", "--grad-accum", "2"], capsys)
    assert rc == 0, err
    a, b = losses(tmp_path / "big"), losses(tmp_path / "acc")
    assert a.keys() == b.keys()
    for s in a:
        assert a[s] == pytest.approx(b[s], rel=1e-5, abs=1e-6)
    wa, wb = (load_file(tmp_path / r / "model" / "model.safetensors") for r in ("big", "acc"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_same_seed_same_run(tmp_path, corpus, bpe_dir, capsys):
    common = [corpus, "--tokenizer", bpe_dir, *TINY, "--steps", "4", "--dropout", "0.1", "--seed", "7"]
    assert cli([*common, "--out", tmp_path / "r1"], capsys)[0] == 0
    assert cli([*common, "--out", tmp_path / "r2"], capsys)[0] == 0
    assert losses(tmp_path / "r1") == losses(tmp_path / "r2")


def test_model_is_the_step_with_the_lowest_held_out_loss(tmp_path, corpus, bpe_dir, capsys, monkeypatch):
    # Held-out losses scripted to worsen after step 2: RUN/model must hold step 2's weights and survive a resume.
    scripted = {1: 3.0, 2: 2.0, 3: 2.5, 4: 2.7, 5: 2.1, 6: 2.9}
    weights, stopped = {}, []

    def evaluate(self):
        weights[self.step] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.step == 4 and not stopped:
            stopped.append(4)
            self._stop_signal = "a test"  # as Ctrl-C would: checkpoint after this step, exit 130
        return scripted[self.step]

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    run = tmp_path / "run"
    common = [*TINY, "--eval-every", "1", "--checkpoint-every", "1", "--precision", "fp32", "--lr", "3e-3"]
    rc, err = cli([corpus, "--tokenizer", bpe_dir, "--out", run, *common, "--steps", "6"], capsys)
    assert rc == 130, err
    rc, err = cli(["--resume", "--out", run, "--no-progress"], capsys)  # the best (step 2) must outlive the stop
    assert rc == 0, err
    assert "weights of step 2" in err and "2.0000" in err
    model = clozelm.load(run / "model").state_dict()
    assert all(torch.equal(model[k], weights[2][k]) for k in model)
    assert not all(torch.equal(model[k], weights[6][k]) for k in model)
    last = torch.load(run / "checkpoint.pt", weights_only=True)
    assert last["step"] == 6 and last["best_step"] == 2
    assert all(torch.equal(last["model"][k], weights[6][k]) for k in last["model"])


def test_mlm_run_gives_a_bert_model(tmp_path, corpus, bpe_dir, capsys):
    run = tmp_path / "bert"
    rc, err = cli([corpus, "--tokenizer", bpe_dir, "--out", run, *TINY, "--objective", "mlm", "--steps", "30",
                   "--lr", "3e-3", "--precision", "fp32"], capsys)
    assert rc == 0, err
    cfg = clozelm.load(run / "model").config
    assert (cfg.causal, cfg.pre_ln, cfg.head) == (False, False, "mlm")
    loss = losses(run)
    assert np.mean([loss[s] for s in range(26, 31)]) < np.mean([loss[s] for s in range(1, 6)])


@pytest.mark.parametrize("option, value, changed, bad_values", [
    ("--mask-rate", 0.4, "0.15", ("0", "1", "-0.2")),
    ("--locality-warmup", 2, "0", ("-1",)),
])
def test_mlm_option_is_recorded_refused_on_resume_and_checked(tmp_path, corpus, bpe_dir, capsys, option, value,
                                                                changed, bad_values):
    run = tmp_path / "bert"
    rc, err = cli([corpus, "--tokenizer", bpe_dir, "--out", run, *TINY, "--objective", "mlm", "--steps", "4",
                   option, str(value), "--precision", "fp32"], capsys)
    assert rc == 0, err
    assert json.loads((run / "run.json").read_text())["train"][option[2:].replace("-", "_")] == value
    rc, err = cli(["--resume", "--out", run, option, changed], capsys)  # changes what is computed
    _one_line_error(rc, err, option[2:].split("-")[0])
    for bad in bad_values:
        rc, err = cli([corpus, "--tokenizer", bpe_dir, "--out", tmp_path / f"bad{bad}", *TINY, "--objective", "mlm",
                       option, bad], capsys)
        _one_line_error(rc, err, option)
        assert not (tmp_path / f"bad{bad}").exists()


def test_locality_bias_fades_linearly_to_nothing():
    cfg = TrainConfig(locality_warmup=10)
    distance = (torch.arange(5)[:, None] - torch.arange(5)[None, :]).abs().float()
    first = locality_bias(cfg, 0, 3, 5, torch.device("cpu"))
    assert first.shape == (3, 5, 5)
    for h in range(3):
        assert torch.equal(first[h], -distance / 2 ** h)
    assert torch.allclose(locality_bias(cfg, 4, 3, 5, torch.device("cpu")), 0.6 * first)
    assert locality_bias(cfg, 10, 3, 5, torch.device("cpu")) is None
    assert locality_bias(TrainConfig(), 0, 3, 5, torch.device("cpu")) is None


def test_locality_warmup_gets_a_masked_lm_off_its_plateau():
    """Copy task: every symbol is written twice, so a masked one can be read off its neighbour. From scratch, a
    bidirectional model stays near chance here (uniform heads: nothing tells it where the neighbour is); with the
    warm-up it solves the task, and keeps the solution once the bias is gone (evaluated without it)."""
    V, T, steps = 32, 48, 300
    objective = MaskedLM(V, [V - 1], V - 1, 0.15)

    def batch(rng, step, n):
        windows = [np.repeat(rng.integers(0, V - 1, size=T // 2), 2) for _ in range(n)]
        return objective.batch(windows, [np.random.default_rng([step, i]) for i in range(n)])

    def held_out_loss(warmup):
        torch.manual_seed(0)
        model = Transformer(ModelConfig(vocab_size=V, n_positions=T, n_embd=64, n_layer=2, n_head=4, causal=False,
                                        pre_ln=False, head="mlm"))
        cfg, rng = TrainConfig(locality_warmup=warmup), np.random.default_rng(0)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95))
        for step in range(steps):
            x, y = batch(rng, step, 16)
            logits, y = logits_and_labels(model, objective, x, y, locality_bias(cfg, step, 4, T, torch.device("cpu")))
            loss = torch.nn.functional.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            logits, y = logits_and_labels(model, objective, *batch(rng, 10**6, 64))
            return torch.nn.functional.cross_entropy(logits, y).item()

    chance = np.log(V - 1)
    assert held_out_loss(0) > chance - 0.4
    assert held_out_loss(steps // 2) < 1.5


def test_fim_run_then_finetune_with_init(tmp_path, corpus, bpe_dir, capsys):
    run = tmp_path / "fim"
    rc, err = cli([corpus, "--tokenizer", bpe_dir, "--out", run, *TINY, "--objective", "fim", "--steps", "8"], capsys)
    assert rc == 0, err
    assert clozelm.load(run / "model").config.extra["objective"] == "fim"
    tuned = tmp_path / "tuned"
    rc, err = cli([corpus / "a.txt", "--init", run / "model", "--out", tuned, "--steps", "3", "--batch-size", "2",
                   "--no-progress"], capsys)
    assert rc == 0, err
    tuned_model = clozelm.load(tuned / "model")
    assert tuned_model.config.extra["objective"] == "fim" and tuned_model.config.n_embd == 32
    start = load_file(run / "model" / "model.safetensors")
    assert not torch.equal(start["transformer.wte.weight"], load_file(tuned / "model" / "model.safetensors")["transformer.wte.weight"])



def test_a_fim_model_fills_in_the_format_it_was_trained_on(tmp_path, corpus, bpe_dir, capsys):
    # fim_judge="fim": log P(middle + separator | <|fim_prefix|> <|fim_suffix|> right <|fim_middle|> left), SPM order,
    # the separator that closes every middle in training saying the middle is complete. "causal": log P(whole text)
    # read left to right, the suffix-aware search of any causal model. "both", the default: the mean of the two
    # (two estimates of one joint probability).
    run = tmp_path / "fim"
    rc, err = cli([corpus, "--tokenizer", bpe_dir, "--out", run, *TINY, "--objective", "fim", "--steps", "8"], capsys)
    assert rc == 0, err
    model = clozelm.load(run / "model")
    tok, sp = model.tokenizer, model.tokenizer.special_tokens
    assert method_for(model) == "fim"
    left, right = "The old dog saw the", " cat near the river."
    ctx = [sp["<|fim_prefix|>"], sp["<|fim_suffix|>"], *tok.encode(right), sp["<|fim_middle|>"], *tok.encode(left)]

    def logp_of(seq, start):
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([seq])).logits[0].float(), -1)
        return sum(logp[i - 1, seq[i]].item() for i in range(start, len(seq)))

    for judge in ("fim", "causal", None):
        options = {} if judge is None else {"fim_judge": judge}
        answers = clozelm.fill(left + " ___" + right, model=model, top=4, precision="fp32", **options)
        assert len(answers) == 4
        for answer in answers:
            middle = tok.encode(" " + answer.blanks[0])
            fim = logp_of(ctx + middle + [tok.eos_id], len(ctx))
            causal = logp_of([tok.eos_id, *tok.encode(answer.text)], 1)
            expected = {"fim": fim, "causal": causal, None: (fim + causal) / 2}[judge]
            assert answer.score == pytest.approx(expected, abs=2e-3), (judge, answer)
    with pytest.raises(ClozelmError, match="fim_judge must be"):
        clozelm.fill(left + " ___" + right, model=model, fim_judge="middle")
    with pytest.raises(ClozelmError, match="trained with the fim objective"):
        clozelm.fill(left + " ___" + right, model="default", fim_judge="fim")


# ---------------------------------------------------------------- CLI errors


def _one_line_error(rc, err, *words):
    """Exit status 2 and one `clozelm: error:` line (the last; progress notes may come before it), no traceback."""
    lines = [line for line in err.strip().splitlines() if line]
    assert rc == 2, err
    errors = [line for line in lines if line.startswith("clozelm: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, err
    for w in words:
        assert w in errors[0], err


def test_non_utf8_file_is_named_or_skipped(tmp_path, corpus, bpe_dir, capsys):
    bad = tmp_path / "in" / "latin1.txt"
    bad.parent.mkdir()
    bad.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (tmp_path / "in" / "good.txt").write_text((corpus / "a.txt").read_text())
    rc, err = cli([tmp_path / "in", "--tokenizer", bpe_dir, "--out", tmp_path / "run", *TINY, "--steps", "1"], capsys)
    _one_line_error(rc, err, "latin1.txt", "not UTF-8", "--skip-bad-files")
    rc, err = cli([tmp_path / "in", "--tokenizer", bpe_dir, "--out", tmp_path / "run2", *TINY, "--steps", "1",
                   "--skip-bad-files"], capsys)
    assert rc == 0 and "warning: skipping" in err and "latin1.txt" in err
    (tmp_path / "bin.dat").write_bytes(b"\x00\x01\x02ELF")
    rc, err = cli([tmp_path / "bin.dat", "--tokenizer", bpe_dir, "--out", tmp_path / "run3", *TINY], capsys)
    _one_line_error(rc, err, "bin.dat", "binary")


def test_missing_tokenizer_tokens_cli(tmp_path, corpus, capsys):
    plain = tmp_path / "plain-bpe"
    train_bpe([corpus / "a.txt"], 280, special_tokens=["<|endoftext|>"]).save(plain)
    rc, err = cli([corpus, "--tokenizer", plain, "--out", tmp_path / "run", *TINY, "--objective", "fim"], capsys)
    _one_line_error(rc, err, "<|fim_prefix|>", "<|fim_middle|>")
    assert not (tmp_path / "run").exists()  # nothing created before the check
    rc, err = cli([corpus, "--out", tmp_path / "run", *TINY], capsys)
    _one_line_error(rc, err, "--tokenizer")


def test_refuses_to_clobber_a_run_dir(tmp_path, corpus, bpe_dir, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("precious")
    args = [corpus, "--tokenizer", bpe_dir, "--out", run, *TINY, "--steps", "2", "--precision", "fp32"]
    rc, err = cli(args, capsys)
    _one_line_error(rc, err, str(run), "--resume", "--overwrite")
    assert (run / "notes.txt").read_text() == "precious"
    rc, err = cli([*args, "--overwrite"], capsys)
    assert rc == 0, err
    assert not (run / "notes.txt").exists()
    rc, err = cli(["--out", run, "--resume", "--lr", "0.5"], capsys)
    _one_line_error(rc, err, "--lr")
    rc, err = cli(["--out", tmp_path / "nothing", "--resume"], capsys)
    _one_line_error(rc, err, "no run to resume")


# ---------------------------------------------------------------- never lose work (real processes)


def test_sigkill_then_resume_gives_the_same_run(tmp_path, corpus, bpe_dir):
    # Dropout on and bf16 autocast (the default): the resumed run must restore RNG state and everything else.
    common = ["train", corpus, "--tokenizer", bpe_dir, *TINY, "--steps", "24", "--checkpoint-every", "5",
              "--eval-every", "8", "--dropout", "0.1", "--seed", "11"]
    straight = child([*common, "--out", tmp_path / "straight"])
    killed = child([*common, "--out", tmp_path / "killed"], env={"CLOZELM_TEST_PAUSE_AT_STEP": "13"})
    wait_for_line(killed, "paused at step 13")
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(30) == -signal.SIGKILL
    assert straight.wait(90) == 0, straight.stderr.read()
    assert max(losses(tmp_path / "killed")) == 13  # steps 11-13 were done, then lost with the process

    resumed = child(["train", "--resume", "--out", tmp_path / "killed", "--no-progress"])
    out, err = resumed.communicate(timeout=90)
    assert resumed.returncode == 0, err
    a, b = losses(tmp_path / "straight"), losses(tmp_path / "killed")
    assert sorted(a) == sorted(b) == list(range(1, 25))
    for s in a:
        assert abs(a[s] - b[s]) <= 1e-6, (s, a[s], b[s])
    val_a = [(r["step"], r["val_loss"]) for r in metrics(tmp_path / "straight") if "val_loss" in r]
    val_b = [(r["step"], r["val_loss"]) for r in metrics(tmp_path / "killed") if "val_loss" in r]
    assert [s for s, _ in val_a] == [s for s, _ in val_b] == [8, 16, 24]
    assert all(abs(x[1] - y[1]) <= 1e-6 for x, y in zip(val_a, val_b))
    wa = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    wb = load_file(tmp_path / "killed" / "model" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_sigint_saves_a_checkpoint_and_exits_130(tmp_path, corpus, bpe_dir):
    run = tmp_path / "run"
    proc = child(["train", corpus, "--tokenizer", bpe_dir, "--out", run, *TINY, "--steps", "50", "--precision", "fp32",
                  "--checkpoint-every", "100"], env={"CLOZELM_TEST_PAUSE_AT_STEP": "7"})
    wait_for_line(proc, "paused at step 7")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "checkpoint saved" in err and "--resume" in err
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["step"] == 7


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, corpus, bpe_dir, capsys):
    run = tmp_path / "run"
    rc, err = cli([corpus, "--tokenizer", bpe_dir, "--out", run, *TINY, "--steps", "20", "--lr", "1e30",
                   "--warmup", "0", "--grad-clip", "0", "--checkpoint-every", "1", "--precision", "fp32"], capsys)
    _one_line_error(rc, err, "loss is", "last good checkpoint")
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    bad_step = max(losses(run)) + 1
    assert state["step"] == bad_step - 1 >= 1
    assert f"at step {bad_step}" in err
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (run / "model").exists()
