"""`evaluate`: run the chosen tasks on one loaded model and gather their figures in one dict."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import ClozelmError
from .cloze import cloze, cloze_sentences
from .lastword import NO_PASSAGE, items_from_documents, items_from_jsonl, lastword, word_fits
from .options import DEFAULT_TASKS, EvalOptions, parse_tasks, unread_options
from .pairs import pairs, pairs_by_bound, read_pairs
from .ppl import perplexity
from .probe import probe, probe_items
from .progress import progress_factory
from .text import draw, read_documents, read_jsonl

BUILTIN_PAIRS = "clozelm's generated minimal pairs (clozelm.eval.minimal_pairs)"


def chosen_tasks(tasks, has_files: bool, opts: EvalOptions) -> tuple[str, ...]:
    if tasks is None:
        available = {"ppl": has_files, "lastword": has_files or opts.lambada is not None, "cloze": has_files,
                     "pairs": True}
        chosen = tuple(t for t in DEFAULT_TASKS if available[t])
        return chosen + (("probe",) if opts.probe is not None else ())
    chosen = parse_tasks(tasks)
    for task in chosen:
        if task in ("ppl", "cloze") and not has_files:
            raise ClozelmError(f"{task} needs text: give FILES")
        if task == "lastword" and not has_files and opts.lambada is None:
            raise ClozelmError("lastword needs passages: give --lambada FILE.jsonl or FILES")
    return chosen


def _check_model(model) -> None:
    if getattr(model, "tokenizer", None) is None:
        raise ClozelmError("eval needs a model with a tokenizer; load it from a directory with tokenizer files")
    if model.config.head is None:
        raise ClozelmError("eval needs a language-model head (this model is an encoder such as BertModel)")


def evaluate(model, files: Sequence[str | Path] = (), *, tasks: str | Sequence[str] | None = None,
             options: EvalOptions | None = None, on_progress: Callable[[str, int, int], None] | None = None,
             **option_values) -> dict:
    """Measure a loaded `clozelm.Model` on `tasks` (None: every default task whose input is at hand).

    files: text files or folders, or one path (ppl, cloze, and lastword without --lambada); options: an
    EvalOptions, and/or its fields as keywords (seed=, stride=, samples=, limit=, lambada=, pairs=, probe=, folds=,
    ...): a keyword that no task run here reads, or that does not apply to this model, is an error.
    on_progress(task, done, total) is called as work gets done. Returns
    {"model", "objective", "seed", "files", "tasks": {task: figures}} (see the task modules for the figures), and
    "skipped": {task: why} when a task run by default found nothing to measure in the files.
    """
    opts = EvalOptions.of(options, **option_values)
    _check_model(model)
    files = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    chosen = chosen_tasks(tasks, bool(files), opts)
    # Options named here that nothing would read are refused (an options object may be shared by many calls;
    # a keyword left at None, as a wrapper passing its own optional arguments on does, asks for nothing)
    given = [name for name, value in option_values.items() if value is not None]
    unread = unread_options(given, chosen, model.config.causal, pairs_by_bound(model, opts))
    if unread:
        raise ClozelmError(unread)
    docs = read_documents(files) if files and {"ppl", "cloze", "lastword"} & set(chosen) else []
    # Read every input before the first forward pass: a bad file fails in a second, not after an hour. A task
    # that runs by default because FILES were given, but finds nothing to measure in them, is left out and said.
    skipped: dict[str, str] = {}
    lambada_items = sents = None
    if "lastword" in chosen:
        if opts.lambada is not None:
            rows = read_jsonl(opts.lambada, "LAMBADA file")
            items = items_from_jsonl(rows, opts.lambada, word_fits(model))
            lambada_items = draw(items, opts.limit_for("lastword", False), opts.seed)
        else:
            lambada_items = draw(items_from_documents(docs, word_fits(model)), opts.limit_for("lastword", True),
                                 opts.seed)
            if not lambada_items:
                if tasks is not None:
                    raise ClozelmError(NO_PASSAGE)
                skipped["lastword"] = NO_PASSAGE.split(": ", 1)[1]
    if "cloze" in chosen:
        try:
            sents = cloze_sentences(docs, opts)
        except ClozelmError as error:
            if tasks is not None:
                raise
            skipped["cloze"] = str(error).split(": ", 1)[1]
    chosen = tuple(task for task in chosen if task not in skipped)
    pair_items, pair_source = None, None
    if "pairs" in chosen:
        if opts.pairs is not None:
            pair_items = read_pairs(opts.pairs, read_jsonl(opts.pairs, "pairs file"))
            pair_source = str(opts.pairs)
        else:
            from .minimal_pairs import generate  # here: `python -m clozelm.eval.minimal_pairs` runs it as a script
            pair_items, pair_source = generate(), BUILTIN_PAIRS
        if opts.limit is not None:  # `limit` pairs of each phenomenon, so that every one is still measured
            groups: dict[str, list[dict]] = {}
            for item in pair_items:
                groups.setdefault(item["phenomenon"], []).append(item)
            pair_items = [item for group in groups.values() for item in draw(group, opts.limit, opts.seed)]

    if "probe" in chosen:
        probe_data = probe_items(opts)

    from ..cloze import fill
    progress = progress_factory(on_progress)
    network = getattr(model, "network", model)
    was_training = network.training
    network.eval()
    results: dict = {"model": model.name if hasattr(model, "name") else type(model).__name__,
                     "objective": getattr(getattr(model, "info", None), "objective", None),
                     "seed": opts.seed, "files": [str(f) for f in files], "tasks": {}}
    if skipped:
        results["skipped"] = skipped
    try:
        for task in chosen:
            if task == "ppl":
                results["tasks"]["ppl"] = perplexity(model, docs, opts, progress)
            elif task == "lastword":
                results["tasks"]["lastword"] = lastword(model, lambada_items, opts, fill, progress)
                results["tasks"]["lastword"]["source"] = str(opts.lambada) if opts.lambada else "FILES"
            elif task == "cloze":
                results["tasks"]["cloze"] = cloze(model, sents, opts, fill, progress)
            elif task == "pairs":
                results["tasks"]["pairs"] = pairs(model, pair_items, opts, progress, pair_source)
            elif task == "probe":
                results["tasks"]["probe"] = probe(model, *probe_data, opts, progress)
    finally:
        network.train(was_training)
    return results
