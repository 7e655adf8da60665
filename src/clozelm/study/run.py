"""`run_study(StudyConfig(...))`: the whole study in one directory, resumable at every stage.

    DIR/study.json        the settings that decide the runs (StudyConfig FIXED) and the corpus files' digests
    DIR/data/train.txt    the training documents; DIR/data/heldout/NNNNN.txt: one file per held-out document
                          (the valid_every-th, 2 x valid_every-th, ... document of the corpus, counted over the
                          files in order)
    DIR/tokenizer/        one byte-level BPE vocabulary, trained on data/train.txt, for every run
    DIR/tokens/           the token cache every run shares (each run's tokens/ points here)
    DIR/runs/OBJ-seedK/   one training run directory per objective and seed (`clozelm train --resume` works)
    DIR/trained/OBJ-seedK.json, DIR/evals/OBJ-seedK.json
                          a finished training's facts (with its model's digest) and a finished evaluation's
                          figures: what a continued study does not do again
    DIR/results.json, DIR/report.md, DIR/*.png

Why this way:
- Same shape: every objective trains the same network (GPT-2's pre-LN blocks, output tied to the embeddings;
  bidirectional attention for mlm and mdlm), so parameter counts are equal, not just within 1%, and nothing
  but the objective and the attention direction differs. (BERT's post-LN layout with its MLM head would add
  a dense layer and an output bias to the masked models.)
- Same data order: the runs of one seed read the same windows of the same token cache in the same order
  (training/loop.py's Batcher: the order is a function of the seed and the number of windows; causal
  objectives read T+1 tokens per window, masked ones T, starting at the same token). The one exception: a
  training split whose length is an exact multiple of T has one window more for the masked objectives,
  and their order then differs.
- The held-out split is written out as files, so training's validation loss and every eval task read exactly
  the same documents, and the tokenizer never sees them.
- Resuming: data, tokenizer and token cache are reused when complete (each is written under a temporary name
  and renamed into place); a run with a checkpoint resumes exactly; a finished run or evaluation is skipped.
  Re-running with the same DIR and other FIXED settings is refused in one line; other objectives or more seeds
  add runs.
- A study's record is small: study.json, tokenizer/, trained/ and evals/ (the tokenizer's 400 kB, the rest
  kilobytes). A run whose model is gone (runs/ and tokens/ deleted to save space, or the record copied to another
  machine) still counts as finished while its evaluation's figures hold for the model digest its training
  recorded: a continued study rebuilds the data split from the corpus (seconds), trains only the runs the record
  lacks, with the same tokenizer, and reports every run. Figures that no longer hold (an eval task's version
  raised, a task the record lacks) cannot be measured again without the model: that run is trained again;
  figures measured with another --eval-limit or --samples stop the study in one line instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..cloze.blanks import BLANK
from ..errors import ClozelmError, MissingPackage
from ..eval import EvalOptions, evaluate
from ..files import atomic_write_bytes, atomic_write_text, expand_inputs
from ..loading import load
from ..model import packed
from ..model.config import ModelConfig
from ..model.device import has_bf16_units, resolve_device
from ..model.transformer import Transformer
from ..tokenizers import load_tokenizer, train_bpe
from ..training import TrainConfig, train
from ..training.data import check_text_file, iter_documents
from ..training.objectives import BIDIRECTIONAL
from ..training.precision import default_precision
from ..training.rundir import RunLock
from .config import SPECIALS, StudyConfig
from .plots import bars_png, lines_png
from .report import FIGURES, cloze_by_k, markdown, summary

STUDY_VERSION = 1
# What a study.json written before the precision was recorded trained in: clozelm train's default then.
RECORDED_BEFORE_PRECISION = "bf16-master"
EVAL_SEED = 0  # every model answers the same eval items; the spread over seeds is the training's
# Per task: raised when the evaluation code changes what the task's figures are, so a continued study evaluates
# it again (3: the masked-diffusion bound drawn as k of n hidden, for ppl and for pairs scored by the bound;
# lastword 3: fill's final ranking prices in that a word blank ends the text; lastword 4 and cloze 3: fill's
# beam keeps distinct spellings, a masked LM's answers are whole characters; lastword 5 and cloze 4: fill's rows
# share their context's cache (other float rounding), a word may open with a token that only opens a character,
# and cloze hides no run of tokens that cuts a character; probe 3: a text found twice counts once; lastword 6,
# cloze 5, pairs 4, probe 4: answers compared in a lossy tokenizer's own spelling, middle words drawn apart from
# the tokenizer and the k rows from the same sentences, no pair whose bad sentence is English, copies told apart
# by their words alone; cloze 5 also leaves out runs that hold a token no fill proposes, WordPiece's [UNK], which
# no byte-level BPE has: the study's figures stay as they were).
EVAL_VERSIONS = {"ppl": 3, "lastword": 6, "cloze": 5, "pairs": 4, "probe": 4}
# The evaluation settings a call may change (eval key field -> its `clozelm study` option): a run whose model is
# gone keeps the figures measured with them, so a call with other values is refused (see _finished_without_model).
CALL_OPTIONS = {"limit": "--eval-limit", "samples": "--samples"}
HELD_OUT_TASKS = ("ppl", "lastword", "cloze")  # the tasks that read the held-out split (pairs and probe: their own data)
EVAL_EXAMPLES = 128  # held-out windows per evaluation during training (the loss curves)
# A full-budget run takes hours and may be killed without warning (a machine taken back): it checkpoints at least
# this often, not only at its evaluations, so that a kill costs minutes; writing one costs little beside 100 steps.
CHECKPOINT_EVERY = 100
LOSS_PLOT, ACCURACY_PLOT, CLOZE_PLOT = "loss_vs_tokens.png", "accuracy_by_task.png", "cloze_by_k.png"


def run_study(config: StudyConfig, *, log: Callable[[str], None] | None = None) -> dict:
    """Train and evaluate what `config` asks for in `config.out` (continuing what is there), write
    results.json, report.md and the plots, and return the results: {"study": {...}, "runs": [{"objective",
    "seed", "params", "tokens", "train_seconds", "tasks", ...}], "summary": [...]}."""
    if not isinstance(config, StudyConfig):
        raise ClozelmError(f"run_study takes a StudyConfig, not {type(config).__name__}")
    say = log or (lambda text: print(text, file=sys.stderr, flush=True))
    out = Path(config.out)
    # every file read before anything is written; a study inside its corpus folder does not read itself
    corpus = _checked_corpus(expand_inputs(config.corpus, exclude=[out]))
    if out.exists() and not out.is_dir():
        raise ClozelmError(f"{out} exists and is not a directory")
    if out.is_dir() and not (out / "study.json").is_file() and any(p.name != "study.lock" for p in out.iterdir()):
        raise ClozelmError(f"{out} holds files but no study (study.json); choose a new or empty directory")
    names = [(o, s) for s in config.seed_list for o in config.objectives]
    if config.report_only:  # reads a study; creates nothing
        return _report_only(out, config, corpus, names, say)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ClozelmError(f"cannot create {out}: {e.strerror}") from None
    lock = RunLock(out)
    lock.path = out / "study.lock"
    lock.acquire()
    fresh = not (out / "study.json").is_file()
    try:
        return _run(out, config, corpus, names, say)
    except ClozelmError:
        # A new study that fails before any run trained (a corpus too small for one window, say) leaves nothing
        # behind: its recorded settings would refuse the corrected call that follows.
        if fresh and not any((out / "runs").glob("*/checkpoint.pt")):
            for path in out.iterdir():
                if path.name != "study.lock":
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        raise
    finally:
        lock.release()
        if created and fresh and [p.name for p in out.iterdir()] == ["study.lock"]:
            (out / "study.lock").unlink()
            out.rmdir()


def _run(out: Path, config: StudyConfig, corpus: list[dict], names: list[tuple[str, int]], say) -> dict:
    """The study itself, under its lock: the record, the data split, the tokenizer, then every run."""
    study = _settings(out, config, corpus)
    _check_precision(config, study["fixed"]["precision"])
    config = dataclasses.replace(config, precision=study["fixed"]["precision"])
    n_documents, n_heldout = _split(out, [Path(c["file"]) for c in corpus], config.valid_every, say)
    _tokenizer(out, config.vocab_size, say)
    study.update(objectives=list(config.objectives), seeds=config.seed_list, documents=n_documents,
                 heldout_documents=n_heldout, tasks=list(config.tasks))
    runs = []
    for i, (objective, seed) in enumerate(names, 1):
        name = f"{objective}-seed{seed}"
        say(f"study: [{i}/{len(names)}] {name}")
        record = _trained(out, name, objective, seed, config, say)
        record["tasks"] = _evaluated(out, name, config, say, record["model_sha256"])
        runs.append(record)
    return _write_report(out, study, runs, say)


def _write_report(out: Path, study: dict, runs: list[dict], say) -> dict:
    _check_same_size(runs)
    study["train_split_tokens"] = runs[0]["train_split_tokens"]
    results = {"study": study, "runs": runs}
    results["summary"] = summary(runs)
    plots = _plots(out, results)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / "report.md", markdown(results, plots))
    say(f"study: wrote {out / 'report.md'}, {out / 'results.json'} and {len(plots)} plots")
    return results


def _report_only(out: Path, config: StudyConfig, corpus: list[dict], names: list[tuple[str, int]], say) -> dict:
    """The report of the runs already trained and evaluated (with this config's evaluation settings), training
    and evaluating nothing; it takes no lock, so it can read a study that another process is continuing."""
    if not (out / "study.json").is_file():
        raise ClozelmError(f"{out} holds no study yet (study.json); run it first")
    if not (out / "data" / "done").is_file():
        raise ClozelmError(f"{out} has no data split (a study restored from its record?): run the study without "
                           "--report-only to rebuild it from the corpus (stop it once the split is written, if "
                           "runs are left to train); finished runs are not trained again")
    study = _settings(out, config, corpus)  # refuses other settings, as continuing would
    counts = json.loads((out / "data" / "done").read_text())
    runs, missing = [], []
    for objective, seed in names:
        name = f"{objective}-seed{seed}"
        record = _read_json(out / "trained" / f"{name}.json")
        digest = _model_digest(out, name, record)
        tasks = {}
        if record is not None and digest is not None:
            keys = _eval_keys(out, config, digest, causal=objective not in BIDIRECTIONAL)
            tasks = _cached_tasks(out / "evals" / f"{name}.json", keys)
        if len(tasks) < len(config.tasks):
            missing.append(name)
            continue
        record["tasks"] = tasks
        runs.append(record)
    if not runs:
        raise ClozelmError(f"{out}: no run is trained and evaluated yet (with these evaluation settings)")
    if missing:
        say(f"study: not finished yet, left out of the report: {', '.join(missing)}")
    study.update(objectives=list(config.objectives), seeds=sorted({r["seed"] for r in runs}),
                 documents=counts["documents"], heldout_documents=counts["heldout"], tasks=list(config.tasks),
                 unfinished=missing)
    return _write_report(out, study, runs, say)


# ---------------------------------------------------------------- settings


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _checked_corpus(files: list[Path]) -> list[dict]:
    """[{"file", "sha256"}] of the corpus files; a one-line error for one that is not UTF-8 text."""
    corpus = []
    for path in files:
        digest, problem = check_text_file(path)
        if problem is not None:
            raise ClozelmError(f"{path} is {problem}")
        corpus.append({"file": str(path), "sha256": digest})
    return corpus


def _setting(value) -> str:
    """A recorded setting as a message names it: None is the default (the option was not given)."""
    return "the default" if value is None else str(value)


def _settings(out: Path, config: StudyConfig, corpus: list[dict]) -> dict:
    """The study's record: written by the first call, and a later call must agree with it once anything was
    built from it (the data split, the tokenizer, a finished run: a record restored from elsewhere has the last
    two without the first)."""
    settings = {"version": STUDY_VERSION, "fixed": config.fixed(), "corpus": corpus}
    path = out / "study.json"
    built = ((out / "data" / "done").is_file() or (out / "tokenizer" / "done").is_file()
             or any((out / "trained").glob("*.json")))
    if path.is_file() and built:
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise ClozelmError(f"{path} is damaged ({type(e).__name__}); move it away to start the study again") from None
        if not isinstance(recorded, dict) or not isinstance(recorded.get("fixed", {}), dict):
            raise ClozelmError(f"{path} is damaged; move it away to start the study again")
        recorded["fixed"] = {"precision": RECORDED_BEFORE_PRECISION, **recorded.get("fixed", {})}
        if settings["fixed"]["precision"] is None:  # not given: the study's own
            settings["fixed"]["precision"] = recorded["fixed"]["precision"]
        for name, value in settings["fixed"].items():
            if recorded["fixed"].get(name) != value:
                raise ClozelmError(f"{out} holds a study with {name} {_setting(recorded['fixed'].get(name))}, "
                                   f"not {_setting(value)}; continue it with its settings, or use another --out")
        if [c["sha256"] for c in recorded.get("corpus", [])] != [c["sha256"] for c in corpus]:
            raise ClozelmError(f"{out} holds a study of other corpus files (or they changed since); use another --out")
        return recorded
    if settings["fixed"]["precision"] is None:
        settings["fixed"]["precision"] = default_precision(resolve_device(config.device))
    atomic_write_text(path, json.dumps(settings, indent=2) + "\n")
    return settings


def _check_precision(config: StudyConfig, precision: str) -> None:
    """Refuse to train a bf16 study where bf16 products are emulated (tens of times slower than fp32 there), unless
    the call asked for it: a study continued on another machine class keeps its precision, so that every
    objective trains alike."""
    device = resolve_device(config.device)
    if precision != "fp32" and config.precision is None and not has_bf16_units(device):
        raise ClozelmError(f"{config.out} trains in {precision} (its study.json), and this {device.type.upper()} has no "
                           "bf16 units: bf16 products are emulated here, tens of times slower; continue the study on a "
                           f"machine that has them, or give --precision {precision} to train here all the same")


# ---------------------------------------------------------------- data and tokenizer


def _split(out: Path, files: list[Path], valid_every: int, say) -> tuple[int, int]:
    """DIR/data: train.txt and heldout/ (one file per held-out document); (documents, held-out documents).
    Held out: the valid_every-th document, the 2 x valid_every-th, ... counted over the files in order (the last
    document when there are fewer than valid_every)."""
    data = out / "data"
    if not (data / "done").is_file():
        partial = out / "data.partial"
        shutil.rmtree(partial, ignore_errors=True)
        (partial / "heldout").mkdir(parents=True)
        try:
            n = 0
            for path in files:
                n += sum(1 for _ in iter_documents(path))
            if n < 2:
                raise ClozelmError(f"the corpus holds {n} document(s) (separated by blank lines): a study holds out "
                                   f"one in {valid_every} and trains on the rest, so it needs at least two")
            held_out = (lambda i: (i + 1) % valid_every == 0) if n >= valid_every else (lambda i: i == n - 1)
            i, held = 0, 0
            with open(partial / "train.txt", "w", encoding="utf-8") as train_file:
                for path in files:
                    for text in iter_documents(path):
                        if held_out(i):
                            (partial / "heldout" / f"{held:05d}.txt").write_text(text + "\n", encoding="utf-8")
                            held += 1
                        else:
                            train_file.write(text + "\n\n")
                        i += 1
        except UnicodeDecodeError as e:
            raise ClozelmError(f"{path} is not UTF-8 text (invalid byte at offset {e.start})") from None
        except OSError as e:
            raise ClozelmError(f"{e.filename or partial}: {e.strerror}") from None
        atomic_write_text(partial / "done", json.dumps({"documents": n, "heldout": held}) + "\n")
        shutil.rmtree(data, ignore_errors=True)
        os.replace(partial, data)
        say(f"study: {n:,} documents: {held:,} held out in {data / 'heldout'}, the rest in {data / 'train.txt'}")
    counts = json.loads((data / "done").read_text())
    return counts["documents"], counts["heldout"]


def _tokenizer(out: Path, vocab_size: int, say) -> Path:
    """DIR/tokenizer: one BPE vocabulary trained on the training split, shared by every run."""
    tok_dir = out / "tokenizer"
    if (tok_dir / "done").is_file():
        return tok_dir
    say(f"study: training a {vocab_size:,}-token BPE vocabulary on {out / 'data' / 'train.txt'}")
    partial = out / "tokenizer.partial"
    shutil.rmtree(partial, ignore_errors=True)
    train_bpe([out / "data" / "train.txt"], vocab_size, special_tokens=SPECIALS).save_pretrained(partial)
    load_tokenizer(partial)  # it reads back
    atomic_write_text(partial / "done", "\n")
    shutil.rmtree(tok_dir, ignore_errors=True)
    os.replace(partial, tok_dir)
    return tok_dir


# ---------------------------------------------------------------- training


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None  # missing or damaged: the work is done again
    return value if isinstance(value, dict) else None


RESUME_COMMAND = "the same `clozelm study` command (finished runs are kept)"


def train_config(config: StudyConfig, run_dir: Path, objective: str, seed: int, overwrite: bool = False) -> TrainConfig:
    """The TrainConfig of one run of the study in `config.out` (its data split and tokenizer must exist)."""
    out, shape, steps = Path(config.out), config.shape, config.steps
    every = _evaluate_every(config)
    layers = {"preset": config.preset} if config.preset else \
        {"n_layer": shape["n_layer"], "n_embd": shape["n_embd"], "n_head": shape["n_head"]}
    return TrainConfig(
        files=[str(out / "data" / "train.txt")], valid=[str(out / "data" / "heldout")],
        tokenizer=str(out / "tokenizer"), out=str(run_dir), overwrite=overwrite, objective=objective, layout="gpt2",
        **layers, n_positions=shape["seq_len"], seq_len=shape["seq_len"], batch_size=config.batch_size, steps=steps,
        lr=config.lr, seed=seed, locality_warmup=round(config.locality_warmup * steps), eval_every=every,
        eval_examples=EVAL_EXAMPLES, checkpoint_every=_checkpoint_every(config), keep_best=False, progress=config.progress,
        reuse_memory=config.reuse_memory, precision=config.precision,
        device=config.device, threads=config.threads)


def _evaluate_every(config: StudyConfig) -> int:
    return max(1, config.steps // config.evals)


def _checkpoint_every(config: StudyConfig) -> int:
    return min(_evaluate_every(config), CHECKPOINT_EVERY)


def _metrics(run_dir: Path) -> tuple[list[tuple[int, float]], float]:
    """([(tokens seen, held-out loss)] of every evaluation, seconds spent in optimizer steps)."""
    steps_tokens, curve, seconds = {}, [], 0.0
    with open(run_dir / "metrics.jsonl", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if "tokens" in record:
                steps_tokens[record["step"]] = record["tokens"]
                seconds = max(seconds, float(record.get("elapsed_s", 0.0)))
            if "val_loss" in record:
                curve.append((steps_tokens.get(record["step"], 0), record["val_loss"]))
    return curve, seconds


def _trained(out: Path, name: str, objective: str, seed: int, config: StudyConfig, say) -> dict:
    """Train (or resume, or skip) one run; its facts, also kept in DIR/trained/NAME.json."""
    record_path = out / "trained" / f"{name}.json"
    run_dir = out / "runs" / name
    record = _read_json(record_path)
    model_file = run_dir / "model" / "model.safetensors"
    if record is not None and model_file.is_file():
        digest = _digest(model_file)
        if record.get("model_sha256") != digest:  # recorded before the record kept it
            record["model_sha256"] = digest
            atomic_write_text(record_path, json.dumps(record, indent=1) + "\n")
        return record
    if record is not None and _finished_without_model(out, name, record, config):
        say(f"study: {name}: trained and evaluated (its record; the model is not here)")
        return record
    if record is not None and not (run_dir / "checkpoint.pt").is_file():
        # Its figures are out of date (the evaluation changed) or missing, and without the model they cannot be
        # measured again: the run is trained again, so that every run is measured alike.
        say(f"study: {name}: its model is not here and its recorded figures are out of date or missing: "
            "training it again")
    # the model is about to change: what was recorded of the old one goes
    (out / "evals" / f"{name}.json").unlink(missing_ok=True)
    record_path.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    tokens = run_dir / "tokens"
    if not tokens.exists() and not tokens.is_symlink():
        (out / "tokens").mkdir(exist_ok=True)
        os.symlink(os.path.join("..", "..", "tokens"), tokens)  # one token cache for every run
    if (run_dir / "run.json").is_file() and (run_dir / "checkpoint.pt").is_file():
        say(f"study: resuming {run_dir}")
        run = train(TrainConfig(out=str(run_dir), resume=True, progress=config.progress,
                                reuse_memory=config.reuse_memory, checkpoint_every=_checkpoint_every(config)),
                    resume_command=RESUME_COMMAND)
    else:
        run = train(train_config(config, run_dir, objective, seed, overwrite=(run_dir / "run.json").exists()),
                    resume_command=RESUME_COMMAND)
    if not run.complete:
        raise ClozelmError(f"{run_dir} stopped at step {run.step} of {run.steps} ({run.stopped}); run the study again "
                           "to continue")
    curve, seconds = _metrics(run_dir)
    settings = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    with torch.device("meta"):  # the count without the memory
        params = Transformer(ModelConfig.from_dict(settings["model"])).num_parameters()
    data = json.loads((out / "tokens" / settings["data_key"] / "meta.json").read_text(encoding="utf-8"))
    seq_len, per_step = settings["train"]["seq_len"], settings["train"]["batch_size"] * settings["train"]["grad_accum"]
    record = {"objective": objective, "seed": seed, "params": params, "tokens": run.step * per_step * seq_len,
              "steps": run.step, "train_seconds": round(seconds, 3), "best_val_loss": run.best_val_loss,
              "best_step": run.best_step, "held_out_loss": [list(point) for point in curve], "run_dir": str(run_dir),
              "train_split_tokens": sum(shard["tokens"] for shard in data["train"]),
              "model_sha256": _digest(run_dir / "model" / "model.safetensors"),
              "machine": _machine(settings.get("numerics", {}))}
    record_path.parent.mkdir(exist_ok=True)
    atomic_write_text(record_path, json.dumps(record, indent=1) + "\n")
    return record


def _machine(numerics: dict) -> str:
    """Where a run finished training, for the report (its train seconds compare only runs of one machine)."""
    device = str(numerics.get("device", "cpu"))
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") and torch.cuda.is_available() else _cpu_name()
    threads = numerics.get("threads")
    return f"{name}, {threads} thread{'' if threads == 1 else 's'}, torch {numerics.get('torch', torch.__version__)}"


def _cpu_name() -> str:
    """The CPU's model name, and its bf16 matrix units where it has them (they decide the training speed)."""
    name = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = (value.strip() for key, _, value in (line.partition(":") for line in f) if key.strip() == "model name")
            name = next(names, "")
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    flags = packed.cpu_flags()
    units = "AMX" if "amx_bf16" in flags else "avx512_bf16" if "avx512_bf16" in flags else ""
    return f"{name} ({units})" if units else name


def _finished_without_model(out: Path, name: str, record: dict, config: StudyConfig) -> bool:
    """Whether a run whose model file is gone has every task's figures for the model its record names. Figures
    measured with other evaluation settings than this call's are refused in one line: without the model they
    cannot be measured again, and training it again for an option would throw hours away."""
    digest = record.get("model_sha256")
    if not isinstance(digest, str):
        return False
    keys = _eval_keys(out, config, digest, causal=record.get("objective") not in BIDIRECTIONAL)
    cache_path = out / "evals" / f"{name}.json"
    held = _cached_tasks(cache_path, keys)
    recorded = (_read_json(cache_path) or {}).get("keys", {})
    for task, key in keys.items():
        old = recorded.get(task)
        if task in held or not isinstance(old, dict):
            continue
        changed = [k for k in CALL_OPTIONS if k in key and old.get(k) != key[k]]
        if changed:
            was = ", ".join(f"{CALL_OPTIONS[k]} {0 if old.get(k) is None else old.get(k)}" for k in changed)
            raise ClozelmError(f"{name}'s model is not here and its {task} figures were measured with {was}: without "
                               "the model they cannot be measured again; continue the study with that setting")
    return len(held) == len(config.tasks)


def _model_digest(out: Path, name: str, record: dict | None) -> str | None:
    """The run's model digest: of its model file, or as its record keeps it when the file is gone."""
    model_file = out / "runs" / name / "model" / "model.safetensors"
    if model_file.is_file():
        return _digest(model_file)
    return record.get("model_sha256") if record is not None else None


def _check_same_size(runs: list[dict]) -> None:
    sizes = [r["params"] for r in runs]
    if sizes and (max(sizes) - min(sizes)) > 0.01 * min(sizes):
        raise ClozelmError(f"the runs' parameter counts differ by more than 1% ({min(sizes):,} to {max(sizes):,})")


# ---------------------------------------------------------------- evaluation


def _eval_keys(out: Path, config: StudyConfig, model_sha256: str, causal: bool) -> dict[str, dict]:
    """What each task's figures depend on; a cached figure is used only while its key holds. A causal model's
    bits per byte are exact: the masked bound's number of samples is no part of them."""
    heldout, marked = hashlib.sha256(), False
    for path in sorted((out / "data" / "heldout").iterdir()):
        heldout.update(path.name.encode() + b"\0" + _digest(path).encode())
        marked = marked or bool(BLANK.search(path.read_text(encoding="utf-8")))
    keys = {}
    for task in config.tasks:
        key = {"eval_version": EVAL_VERSIONS.get(task, 1), "limit": config.eval_limit, "seed": EVAL_SEED,
               "model_sha256": model_sha256}
        if task in HELD_OUT_TASKS:
            key["heldout_sha256"] = heldout.hexdigest()
        if task == "lastword" and marked:  # such passages are left out since lastword 4: other items are drawn
            key["blank_passages"] = "left out"
        if task == "ppl" and not causal:
            key["samples"] = config.eval_samples
        if task == "pairs":
            key["pair_samples"] = EvalOptions().pair_samples
        keys[task] = key
    return keys


def _cached_tasks(cache_path: Path, keys: dict[str, dict]) -> dict:
    """The figures in an eval cache file whose keys still hold."""
    cached = _read_json(cache_path) or {}
    tasks, recorded = cached.get("tasks", {}), cached.get("keys", {})
    return {task: tasks[task] for task, key in keys.items() if task in tasks and _holds(recorded.get(task), key)}


def _holds(recorded: dict | None, key: dict) -> bool:
    """Whether a recorded key is `key`. Keys recorded before a causal model's ppl left out the masked bound's
    samples carry them: they do not count."""
    if not isinstance(recorded, dict):
        return False
    return {k: v for k, v in recorded.items() if k in key or k != "samples"} == key


def _evaluated(out: Path, name: str, config: StudyConfig, say, model_sha256: str) -> dict:
    """The run's eval figures per task (cached in DIR/evals/NAME.json). A task that cannot run on this
    corpus (say, cloze without sentences of 8 to 40 words) is recorded as {"error": why}, not fatal; one that lacked an
    optional package is tried again by the next run of the study while the model is here."""
    model_dir = out / "runs" / name / "model"
    objective = name.rsplit("-seed", 1)[0]
    keys = _eval_keys(out, config, model_sha256, causal=objective not in BIDIRECTIONAL)  # _trained's digest
    cache_path = out / "evals" / f"{name}.json"
    tasks = _cached_tasks(cache_path, keys)
    # A task that lacked an optional package runs again while the model is here: the package may be there now.
    model_here = (model_dir / "model.safetensors").is_file()
    todo = [t for t in config.tasks if t not in tasks or (model_here and tasks[t].get("missing_package"))]
    if todo:
        model = load(model_dir, device=config.device)
        options = EvalOptions(seed=EVAL_SEED, limit=config.eval_limit, samples=config.eval_samples)
        heldout = out / "data" / "heldout"
        for task in todo:
            say(f"study: evaluating {name}: {task}")
            started = time.perf_counter()
            try:
                figures = evaluate(model, [heldout], tasks=task, options=options)["tasks"][task]
            except ClozelmError as e:
                say(f"study: note: {name}: {task} did not run: {e}")
                figures = {"error": str(e), **({"missing_package": True} if isinstance(e, MissingPackage) else {})}
            figures["seconds"] = round(time.perf_counter() - started, 3)
            tasks[task] = figures
            cache_path.parent.mkdir(exist_ok=True)
            atomic_write_text(cache_path, json.dumps({"keys": {t: keys[t] for t in tasks}, "tasks": tasks}, indent=1)
                              + "\n")
    return {t: tasks[t] for t in config.tasks}


# ---------------------------------------------------------------- plots


def _mean_curve(curves: list[list[tuple[int, float]]]) -> list[tuple[float, float]]:
    by_tokens: dict[int, list[float]] = {}
    for curve in curves:
        for tokens, loss in curve:
            by_tokens.setdefault(tokens, []).append(loss)
    return [(float(t), sum(v) / len(v)) for t, v in sorted(by_tokens.items())]


def _plots(out: Path, results: dict) -> list[str]:
    runs, rows = results["runs"], results["summary"]
    objectives = [o for o in results["study"]["objectives"] if any(r["objective"] == o for r in runs)]
    written = []
    curves = {o: _mean_curve([r["held_out_loss"] for r in runs if r["objective"] == o]) for o in objectives}
    atomic_write_bytes(out / LOSS_PLOT, lines_png(curves, "HELD-OUT LOSS, EACH OBJECTIVE ITS OWN", "TRAINING TOKENS",
                                                  "NATS PER PREDICTED TOKEN"))
    written.append(LOSS_PLOT)
    figures = {(f.task, f.key): f for f in FIGURES}
    groups, values = [], {}
    for row in rows:
        figure = figures[(row["task"], row["figure"])]
        if not figure.higher_is_better:
            continue
        group = figure.short
        groups.append(group)
        for name, s in row["objectives"].items():
            values[(group, name)] = (s["mean"], s["spread"])
    atomic_write_bytes(out / ACCURACY_PLOT, bars_png(groups, objectives, values, "ACCURACY BY TASK AND OBJECTIVE",
                                                     "SHARE CORRECT (MEAN, +- SD OVER SEEDS)"))
    written.append(ACCURACY_PLOT)
    by_k = cloze_by_k(runs, objectives)
    if by_k:
        series = {name: [(float(k), v) for k, v in zip(by_k["ks"], row) if v is not None]
                  for name, row in by_k["rows"].items()}
        atomic_write_bytes(out / CLOZE_PLOT, lines_png(series, "CLOZE: EXACT MATCH BY HIDDEN TOKENS", "K TOKENS",
                                                       "SHARE EXACT", x_ticks=[(k, str(k)) for k in by_k["ks"]],
                                                       y_floor=0.0))
        written.append(CLOZE_PLOT)
    return written
