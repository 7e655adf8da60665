"""`clozelm study` end to end at a tiny budget: every objective at one shape, budget and data order, two seeds,
every eval task; stopped between runs and in the middle of a training, it continues where it was (the stopped
run resumes exactly) and does nothing twice; report.md, results.json and the plots say what the runs say."""

from __future__ import annotations

import json
import shutil
import struct
from dataclasses import replace

import pytest
import torch

from clozelm.cli import main
from clozelm.errors import ClozelmError, MissingPackage
from clozelm.files import expand_inputs
from clozelm.eval import TASKS
from clozelm.study import StudyConfig, run_study
from clozelm.study import run as study_run
from clozelm.training import checkpoint as ckpt
from clozelm.training import train
from clozelm.training.objectives import OBJECTIVES

TINY = dict(tokens=4096, seeds=2, n_layer=2, n_embd=32, n_head=2, seq_len=32, vocab_size=300, batch_size=4, evals=2,
            eval_limit=4, eval_samples=2, progress=False)
VERDICTS = {"left-to-right", "left-to-right, not conclusive", "bidirectional", "within noise", "no noise estimate",
            "not measured"}


def _losses(run_dir) -> dict[int, float]:
    records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_a_study_end_to_end_stopped_twice_and_continued(tmp_path, corpus, monkeypatch, capsys):
    out = tmp_path / "study"
    config = StudyConfig(corpus=[corpus], out=out, **TINY)
    order = [f"{o}-seed{s}" for s in (0, 1) for o in OBJECTIVES]

    # 1. Ctrl-C between runs: the first three are trained and evaluated, nothing else
    def interrupt_at_the_fourth(text):
        if text.startswith("study: [4/10]"):
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run_study(config, log=interrupt_at_the_fourth)
    assert sorted(p.stem for p in (out / "evals").iterdir()) == sorted(order[:3])
    kept = {p: p.stat().st_mtime_ns for p in [*(out / "trained").iterdir(), *(out / "evals").iterdir()]}

    # 2. stopped in the middle of the fourth run's training (as a kill after a checkpoint would leave it)
    def stopping_train(cfg, **kw):
        return real_train(replace(cfg, stop_after=3) if cfg.objective == "hybrid" else cfg, **kw)
    real_train = study_run.train
    monkeypatch.setattr(study_run, "train", stopping_train)
    capsys.readouterr()
    with pytest.raises(ClozelmError, match="stopped at step 3 of 32"):
        run_study(config, log=lambda text: None)
    monkeypatch.undo()
    # what the stop tells the user to run is the study again, not the run's own `clozelm train --resume`
    assert "continue with: the same `clozelm study` command" in capsys.readouterr().err

    # 3. run again: continues, and does nothing twice; every run, the resumed one too, checkpoints at least every
    # CHECKPOINT_EVERY steps (here 5; its evaluations come every 16), so that a kill without warning costs little
    said, saved = [], []
    def spied_save(state, path):
        saved.append((path.parent.name, state["step"]))
        real_save(state, path)
    real_save = ckpt.save
    monkeypatch.setattr(ckpt, "save", spied_save)
    monkeypatch.setattr(study_run, "CHECKPOINT_EVERY", 5)
    results = run_study(config, log=said.append)
    monkeypatch.undo()
    assert "study: resuming " + str(out / "runs" / "hybrid-seed0") in said
    for name in order[3:]:
        assert [step for run, step in saved if run == name] == [5, 10, 15, 20, 25, 30, 32]
    assert not any(name in text for text in said for name in order[:3] if "evaluating" in text)
    assert len(kept) == 6 and all(path.stat().st_mtime_ns == t for path, t in kept.items())
    # the stopped run resumed exactly: the same losses as the same run trained straight through
    straight = train(study_run.train_config(config, tmp_path / "straight", "hybrid", 0))
    assert _losses(out / "runs" / "hybrid-seed0") == _losses(straight.dir)

    # every objective, seed, task; one shape, one budget, one token cache (the same data order per seed)
    runs = results["runs"]
    assert [f"{r['objective']}-seed{r['seed']}" for r in runs] == order
    assert len({r["params"] for r in runs}) == 1 and {r["tokens"] for r in runs} == {32 * 4 * 32}
    assert all(r["steps"] == 32 and r["train_seconds"] > 0 and len(r["held_out_loss"]) == 2 for r in runs)
    keys = {json.loads((out / "runs" / name / "run.json").read_text())["data_key"] for name in order}
    assert len(keys) == 1
    for r in runs:
        assert set(r["tasks"]) == set(TASKS)
        assert r["tasks"]["ppl"]["bits_per_byte"] > 0 and 0 <= r["tasks"]["pairs"]["accuracy"] <= 1
        assert ("bits_per_byte_se" in r["tasks"]["ppl"]) == (r["objective"] in ("mlm", "mdlm"))
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))

    # the report: per task a table of mean and spread over the two seeds, the winner and the claim
    rows = {(row["task"], row["figure"]): row for row in results["summary"]}
    assert {"ppl", "lastword", "cloze", "pairs"} <= {task for task, _ in rows}
    for (task, figure), row in rows.items():
        assert set(row["objectives"]) <= set(OBJECTIVES) and row["winners"]
        assert all(s["n"] == 2 and s["spread"] is not None for s in row["objectives"].values())
        if figure != "left_only_accuracy":
            assert row["claim"]["verdict"] in VERDICTS
    report = (out / "report.md").read_text()
    for heading in ("## ppl: bits per byte", "## lastword:", "## cloze: middle word", "## pairs:", "## Runs"):
        assert heading in report
    assert " ± " in report and "The claim: " in report
    # each run says where it trained (its seconds compare only runs of one machine), and one machine says nothing more
    machine = results["runs"][0]["machine"]
    assert machine.endswith(f", 1 thread, torch {torch.__version__}") and {r["machine"] for r in results["runs"]} == {machine}
    assert report.count(f" | {machine} |") == len(results["runs"]) and "more than one machine" not in report
    summary_rows = [line for line in report.split("## Summary")[1].split("\n## ")[0].splitlines() if line.startswith("| ")]
    assert len(summary_rows) == 1 + len(results["summary"])  # the header, then a row per figure
    for name in ("loss_vs_tokens.png", "accuracy_by_task.png", "cloze_by_k.png"):
        assert f"]({name})" in report
        width, height = _png_size(out / name)
        assert width >= 400 and height >= 300

    # a continued study keeps its settings; fewer objectives or seeds reuse what is there
    with pytest.raises(ClozelmError, match="holds a study with tokens 4096, not 8192"):
        run_study(replace(config, tokens=8192), log=lambda text: None)
    with pytest.raises(ClozelmError, match="holds a study with lr the default, not 0.01;"):
        run_study(replace(config, lr=0.01), log=lambda text: None)
    said.clear()
    again = run_study(replace(config, objectives=("clm", "mdlm"), seeds=1), log=said.append)
    assert [r["objective"] for r in again["runs"]] == ["clm", "mdlm"] and not any("evaluating" in t for t in said)

    # the report of what is finished, while more seeds are still to come: it trains and evaluates nothing
    said.clear()
    partial = run_study(replace(config, seeds=3, report_only=True), log=said.append)
    assert [f"{r['objective']}-seed{r['seed']}" for r in partial["runs"]] == order
    assert partial["study"]["unfinished"] == [f"{o}-seed2" for o in OBJECTIVES]
    assert not (out / "runs" / "clm-seed2").exists() and not any("evaluating" in t or "[" in t for t in said)
    assert "**Partial**: 5 run(s) not finished yet" in (out / "report.md").read_text()
    with pytest.raises(ClozelmError, match="holds no study yet"):
        run_study(replace(config, out=tmp_path / "none", report_only=True), log=lambda text: None)
    assert not (tmp_path / "none").exists()


def test_the_held_out_split_is_every_nth_document_and_nothing_else(tmp_path):
    # The valid_every-th, 2 x valid_every-th, ... document over the files in order, and no other; a corpus
    # folder's JSON (its manifest) is no document; with fewer documents than valid_every, the last is held out.
    docs = [f"Document number {i} says hello." for i in range(120)]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("\n\n".join(docs[:70]) + "\n", encoding="utf-8")
    (corpus / "b.txt").write_text("\n\n".join(docs[70:]) + "\n", encoding="utf-8")
    (corpus / "MANIFEST.json").write_text('{"files": ["a.txt", "b.txt"]}\n', encoding="utf-8")
    files = expand_inputs([corpus])
    assert [f.name for f in files] == ["a.txt", "b.txt"] and expand_inputs([corpus / "MANIFEST.json"])

    def split(out, files):
        counts = study_run._split(out, files, 50, lambda text: None)
        held = [p.read_text(encoding="utf-8").strip() for p in sorted((out / "data" / "heldout").iterdir())]
        train = [d.strip() for d in (out / "data" / "train.txt").read_text(encoding="utf-8").split("\n\n")]
        return counts, held, [d for d in train if d]

    counts, held, train = split(tmp_path / "s", files)
    assert counts == (120, 2) and held == [docs[49], docs[99]]
    assert train == [d for i, d in enumerate(docs) if i not in (49, 99)]
    (tmp_path / "few.txt").write_text("\n\n".join(docs[:5]) + "\n", encoding="utf-8")
    assert split(tmp_path / "few", [tmp_path / "few.txt"]) == ((5, 1), [docs[4]], docs[:4])


def test_eval_figures_are_kept_while_what_they_read_is_unchanged(tmp_path, corpus):
    out = tmp_path / "study"
    config = StudyConfig(corpus=[corpus], out=out, **{**TINY, "seeds": 1, "objectives": ("clm",)})
    run_study(config, log=lambda text: None)
    model = study_run._digest(out / "runs" / "clm-seed0" / "model" / "model.safetensors")
    assert json.loads((out / "trained" / "clm-seed0.json").read_text())["model_sha256"] == model
    before = study_run._eval_keys(out, config, model, causal=True)
    assert before == study_run._eval_keys(out, config, model, causal=True)
    assert study_run._cached_tasks(out / "evals" / "clm-seed0.json", before).keys() == set(TASKS)
    # The masked bound's samples are part of a masked model's bits per byte only; a key recorded with them for a
    # causal model (as studies before that distinction recorded it) still holds.
    more = replace(config, eval_samples=config.eval_samples + 1)
    assert study_run._eval_keys(out, more, model, causal=True) == before
    assert study_run._eval_keys(out, more, model, causal=False)["ppl"] != study_run._eval_keys(
        out, config, model, causal=False)["ppl"]
    cache = json.loads((out / "evals" / "clm-seed0.json").read_text())
    cache["keys"]["ppl"]["samples"] = 2
    (out / "evals" / "clm-seed0.json").write_text(json.dumps(cache))
    assert study_run._cached_tasks(out / "evals" / "clm-seed0.json", before).keys() == set(TASKS)
    first = sorted((out / "data" / "heldout").iterdir())[0]
    first.write_text(first.read_text(encoding="utf-8") + " One more sentence.", encoding="utf-8")
    after = study_run._eval_keys(out, config, model, causal=True)
    changed = {task for task in TASKS if after[task] != before[task]}
    assert changed == {"ppl", "lastword", "cloze"}  # pairs and probe read their own data
    # a held-out text with a blank marker: lastword now leaves its passages out, so its figures are redone
    assert "blank_passages" not in after["lastword"]
    first.write_text(first.read_text(encoding="utf-8") + " Mr. ____ came.", encoding="utf-8")
    assert study_run._eval_keys(out, config, model, causal=True)["lastword"]["blank_passages"] == "left out"
    assert study_run._cached_tasks(out / "evals" / "clm-seed0.json", after).keys() == {"pairs", "probe"}


def test_a_task_that_lacked_a_package_runs_again_when_the_study_continues(tmp_path, corpus, monkeypatch):
    """The first run of the study lacks a task's package (its evaluation raises MissingPackage): recorded as an
    error, the study goes on; the next run, with the package there, measures that task and nothing else (an error
    the package cannot fix, the tiny corpus's probe, stands); without the model the error stands and nothing is
    trained again."""
    out = tmp_path / "study"
    config = StudyConfig(corpus=[corpus], out=out, **{**TINY, "seeds": 1, "objectives": ("clm",)})
    real = study_run.evaluate
    asked = []

    def without_the_package(model, paths, tasks, options):
        asked.append(tasks)
        if tasks == "lastword":
            raise MissingPackage("lastword: needs `pip install something`")
        return real(model, paths, tasks=tasks, options=options)

    monkeypatch.setattr(study_run, "evaluate", without_the_package)
    first = run_study(config, log=lambda text: None)["runs"][0]["tasks"]
    assert first["lastword"] == {"error": "lastword: needs `pip install something`", "missing_package": True,
                                 "seconds": first["lastword"]["seconds"]}
    assert "error" in first["probe"] and "missing_package" not in first["probe"]  # 4 texts, 5 folds: not a package
    assert asked == list(config.tasks)
    asked.clear()
    monkeypatch.setattr(study_run, "evaluate", lambda model, paths, tasks, options: (
        asked.append(tasks), real(model, paths, tasks=tasks, options=options))[1])
    second = run_study(config, log=lambda text: None)["runs"][0]["tasks"]
    assert asked == ["lastword"] and "error" not in second["lastword"]
    assert {t: f for t, f in second.items() if t != "lastword"} == {t: f for t, f in first.items() if t != "lastword"}
    cache = out / "evals" / "clm-seed0.json"
    record = json.loads(cache.read_text())
    record["tasks"]["lastword"] = first["lastword"]
    cache.write_text(json.dumps(record))
    shutil.rmtree(out / "runs")
    asked.clear()
    third = run_study(config, log=lambda text: None)["runs"][0]["tasks"]
    assert asked == [] and third["lastword"]["missing_package"] and not (out / "runs").exists()


def test_a_study_record_without_its_models_is_finished_and_continues_with_its_tokenizer(tmp_path, corpus):
    """The record (study.json, tokenizer/, trained/, evals/) copied to a new directory: the report is the same
    without the models, a continued study trains only what the record lacks, and a run whose figures are not all
    there is trained again."""
    out = tmp_path / "study"
    config = StudyConfig(corpus=[corpus], out=out, **{**TINY, "seeds": 1, "objectives": ("clm", "mlm")})
    first = run_study(config, log=lambda text: None)
    copy = tmp_path / "copy"
    copy.mkdir()
    for part in ("study.json", "tokenizer", "trained", "evals"):
        (shutil.copytree if (out / part).is_dir() else shutil.copy)(out / part, copy / part)
    vocab = (copy / "tokenizer" / "vocab.json").read_bytes()
    said = []
    moved = replace(config, out=copy)
    with pytest.raises(ClozelmError, match="no data split .* without --report-only to rebuild it"):
        run_study(replace(moved, report_only=True), log=said.append)
    # the record's settings hold before anything is rebuilt: another budget, or other evaluation settings
    # (figures that cannot be measured again without the model), are refused and nothing is trained
    with pytest.raises(ClozelmError, match="holds a study with tokens 4096, not 8192"):
        run_study(replace(moved, tokens=8192), log=said.append)
    with pytest.raises(ClozelmError, match="model is not here and its .* measured with --eval-limit 4"):
        run_study(replace(moved, eval_limit=5), log=said.append)
    assert not (copy / "runs").exists() and json.loads((copy / "study.json").read_text())["fixed"]["tokens"] == 4096
    again = run_study(moved, log=said.append)["runs"]  # the split rebuilt; nothing trained
    assert again == first["runs"]
    assert run_study(replace(moved, report_only=True), log=said.append)["runs"] == first["runs"]
    assert (copy / "report.md").read_text() == (out / "report.md").read_text()
    assert not (copy / "runs").exists() and (copy / "tokenizer" / "vocab.json").read_bytes() == vocab
    assert sum("the model is not here" in line for line in said) == 2
    # one more objective trains with the recorded tokenizer; a run missing a figure is trained again
    cache = json.loads((copy / "evals" / "mlm-seed0.json").read_text())
    del cache["tasks"]["probe"]
    (copy / "evals" / "mlm-seed0.json").write_text(json.dumps(cache))
    said.clear()
    more = run_study(replace(moved, objectives=("clm", "mlm", "fim")), log=said.append)
    assert [line for line in said if "out of date" in line] == [
        "study: mlm-seed0: its model is not here and its recorded figures are out of date or missing: "
        "training it again"]
    assert sorted(p.name for p in (copy / "runs").iterdir()) == ["fim-seed0", "mlm-seed0"]
    assert (copy / "tokenizer" / "vocab.json").read_bytes() == vocab
    assert [r["objective"] for r in more["runs"]] == ["clm", "mlm", "fim"]
    assert more["runs"][0] == first["runs"][0]


def test_the_command_line_and_its_one_line_errors(tmp_path, corpus, capsys):
    rc = main(["study", str(corpus), "--out", str(tmp_path / "s"), "--objectives", "clm,gpt"])
    assert rc == 2 and "unknown objective 'gpt'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    rc = main(["study", str(corpus), "--out", str(tmp_path / "s"), "--preset", "gpt2", "--n-layer", "2"])
    assert rc == 2 and "preset fixes the shape" in capsys.readouterr().err
    rc = main(["study", str(tmp_path / "missing"), "--out", str(tmp_path / "s")])
    assert rc == 2 and "missing" in capsys.readouterr().err and not (tmp_path / "s").exists()
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    rc = main(["study", str(corpus), str(tmp_path / "latin1.txt"), "--out", str(tmp_path / "s")])
    assert rc == 2 and "latin1.txt is not UTF-8" in capsys.readouterr().err and not (tmp_path / "s").exists()
    (tmp_path / "small.txt").write_text("One document,\nin two lines.\n")
    rc = main(["study", str(tmp_path / "small.txt"), "--out", str(tmp_path / "s")])
    assert rc == 2 and "holds 1 document(s)" in capsys.readouterr().err and not (tmp_path / "s").exists()
    # A window longer than the training split fails after the split and the tokenizer were built: a new study
    # that trained nothing leaves nothing behind, so the corrected call below is not refused for its settings.
    rc = main(["study", str(corpus), "--out", str(tmp_path / "s"), "--objectives", "clm", "--seeds", "1",
               "--n-layer", "1", "--n-embd", "32", "--seq-len", "100000", "--vocab-size", "280", "--no-progress"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and last.startswith("clozelm: error: the training split has") and not (tmp_path / "s").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "report.md").write_text("mine")
    rc = main(["study", str(corpus), "--out", str(busy)])
    assert rc == 2 and "holds files but no study" in capsys.readouterr().err
    assert [p.name for p in busy.iterdir()] == ["report.md"] and (busy / "report.md").read_text() == "mine"
    rc = main(["study", str(corpus), "--out", str(tmp_path / "s"), "--objectives", "clm,mdlm", "--seeds", "1",  # same DIR:
               # nothing was built from the refused corpus, so it takes the new settings
               "--tokens", "1024", "--n-layer", "1", "--n-embd", "32", "--seq-len", "32", "--vocab-size", "280",
               "--batch-size", "4", "--tasks", "ppl,pairs", "--eval-limit", "2", "--samples", "2", "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "ppl: bits per byte" in captured.out and "pairs: minimal pairs" in captured.out
    results = json.loads((tmp_path / "s" / "results.json").read_text())
    assert [(r["objective"], r["seed"], set(r["tasks"])) for r in results["runs"]] == \
        [("clm", 0, {"ppl", "pairs"}), ("mdlm", 0, {"ppl", "pairs"})]
    assert results["study"]["fixed"]["n_head"] == 2  # n_embd 32: heads of 64 dimensions, but at least two


def test_config_checks_each_value_in_one_line():
    base = dict(corpus=["c"], out="o")
    for changes, words in [(dict(tokens=0), "tokens must be an integer >= 1"), (dict(seeds=1.5), "seeds must be"),
                           (dict(objectives="clm,xl"), "unknown objective 'xl'"), (dict(tasks=""), "tasks: name"),
                           (dict(n_embd=30, n_head=4), "not divisible"), (dict(locality_warmup=2), "locality_warmup"),
                           (dict(vocab_size=100), "vocab_size must be"), (dict(device="tpu"), "device must be"),
                           (dict(precision="fp16"), "precision must be one of bf16-master, bf16, fp32")]:
        with pytest.raises(ClozelmError, match=words):
            StudyConfig(**base, **changes)
    c = StudyConfig(**base, objectives="mdlm, clm", n_embd=384)
    assert c.objectives == ("clm", "mdlm") and c.shape == {"n_layer": 6, "n_embd": 384, "n_head": 6, "seq_len": 256}
    assert StudyConfig(**base, preset="gpt2", seq_len=128).shape == {"n_layer": 12, "n_embd": 768, "n_head": 12,
                                                                     "seq_len": 128}
    assert StudyConfig(**base, tokens=10).steps == 1  # at least one step



def test_the_command_line_study_reuses_memory_unless_told_not_to(tmp_path, corpus, monkeypatch):
    import clozelm.study as study_package
    seen = []
    monkeypatch.setattr(study_package, "run_study", lambda config: seen.append(config) or {"summary": []})
    for flags, expected in (([], True), (["--no-reuse-memory"], False)):
        assert main(["study", str(corpus), "--out", str(tmp_path / "s"), *flags]) == 0
        assert seen[-1].reuse_memory is expected
        assert study_run.train_config(seen[-1], tmp_path / "run", "clm", 0).reuse_memory is expected


def test_a_study_keeps_the_precision_it_started_with(tmp_path, corpus, monkeypatch):
    """A new study records clozelm train's default precision on its device and trains every run in it; continued
    (on another machine class, say) it keeps it: a run of another precision would not be trained alike. A bf16
    study continued where bf16 is emulated, tens of times slower, is refused unless the call asks for it; a
    study.json written before precisions were recorded trained in bf16 with fp32 masters."""
    from clozelm.training.precision import default_precision
    out = tmp_path / "study"
    config = StudyConfig(corpus=[corpus], out=out, **{**TINY, "seeds": 1, "tokens": 512}, objectives=("clm",),
                         tasks=("ppl",))
    run_study(config, log=lambda text: None)
    ours = default_precision(torch.device("cpu"))
    assert json.loads((out / "study.json").read_text())["fixed"]["precision"] == ours
    assert json.loads((out / "runs" / "clm-seed0" / "run.json").read_text())["train"]["precision"] == ours
    words = {"bf16-master": "bf16 with fp32 master weights", "fp32": "fp32"}[ours]
    assert f"steps of 4 sequences, trained in {words}); seeds 0." in (out / "report.md").read_text()
    other = "fp32" if ours != "fp32" else "bf16-master"
    with pytest.raises(ClozelmError, match=f"holds a study with precision {ours}, not {other}; continue it"):
        run_study(replace(config, precision=other), log=lambda text: None)

    recorded = json.loads((out / "study.json").read_text())
    del recorded["fixed"]["precision"]  # as a study recorded before the field
    (out / "study.json").write_text(json.dumps(recorded))
    with pytest.raises(ClozelmError, match="holds a study with precision bf16-master, not fp32"):
        run_study(replace(config, precision="fp32"), log=lambda text: None)
    monkeypatch.setattr(study_run, "has_bf16_units", lambda device: False)
    more = replace(config, objectives=("clm", "mlm"))
    with pytest.raises(ClozelmError, match="trains in bf16-master .its study.json., and this CPU has no bf16 units"):
        run_study(more, log=lambda text: None)
    assert not (out / "runs" / "mlm-seed0").exists()
    trained = []
    monkeypatch.setattr(study_run, "train", lambda cfg, **kw: trained.append(cfg.precision) or real_train(cfg, **kw))
    real_train = train
    run_study(replace(more, precision="bf16-master"), log=lambda text: None)
    assert trained == ["bf16-master"]
