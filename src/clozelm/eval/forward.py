"""The forward passes every task shares: many rows of tokens, batched by length, and the log-probability of
chosen tokens at chosen positions (or the mean hidden state over chosen positions).

Rows are sorted by length and packed so that a batch holds at most a fixed number of tokens and of logits;
rows of unequal length are padded on the right under an attention mask, which changes nothing for the real
tokens. Log-probabilities come from `clozelm.scoring.log_probs` (float32, as every search in clozelm reads
them) and are summed in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .. import scoring

# At most this many logits (batch x length x vocabulary) in memory at once: 256 MB in float32.
MAX_LOGITS = 1 << 26


def _batches(lengths: Sequence[int], max_tokens: int):
    """Lists of row indices, shortest rows first, each batch within `max_tokens` (rows x longest row)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) + 1) * lengths[i] > max_tokens:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def _padded(model, rows: Sequence[Sequence[int]], batch: list[int]):
    longest = max(len(rows[i]) for i in batch)
    ids = torch.zeros(len(batch), longest, dtype=torch.long)
    valid = torch.zeros(len(batch), longest, dtype=torch.long)
    for r, i in enumerate(batch):
        ids[r, :len(rows[i])] = torch.as_tensor(rows[i], dtype=torch.long)
        valid[r, :len(rows[i])] = 1
    ragged = any(len(rows[i]) != longest for i in batch)
    return ids.to(model.device), (valid.to(model.device) if ragged else None)


def _batch_logits(model, rows: Sequence[Sequence[int]], batch_tokens: int,
                  positions: Sequence[Sequence[int]] | None = None):
    """(indices of the rows in a batch, the model's logits over that padded batch [B, T, V]), batch by batch;
    with `positions` (per row, the positions whose logits are read), the logits there only, [N, V] in row-major
    order, and where each position's row is in them ([B, T] long, -1 elsewhere): a masked model's pseudo-likelihood
    reads one position of each row, and the vocabulary projection of every other would be wasted."""
    max_tokens = max(1, min(batch_tokens, MAX_LOGITS // model.config.vocab_size))
    for batch in _batches([len(r) for r in rows], max_tokens):
        ids, valid = _padded(model, rows, batch)
        if positions is None:
            with torch.inference_mode():
                yield batch, model(ids, attention_mask=valid).logits, None
            continue
        at = torch.zeros(ids.shape, dtype=torch.bool)
        for r, i in enumerate(batch):
            at[r, list(positions[i])] = True
        index = torch.where(at, at.flatten().cumsum(0).view(at.shape) - 1, -1).to(ids.device)
        with torch.inference_mode():
            yield batch, model(ids, attention_mask=valid, logits_at=at.to(ids.device)).logits, index


def token_logprobs(model, rows: Sequence[Sequence[int]], targets: Sequence[Sequence[tuple[int, int]]], *,
                   batch_tokens: int = 4096, exclude: Sequence[int] = (), greedy: bool = False,
                   advance: Callable[[int], None] | None = None) -> list:
    """For each row, the log-probability (float64) of every (position, token) in its `targets`: the log-softmax
    of the logits at `position`, read at `token`, in the order given.

    A causal model's logits at position p predict the token at p + 1; a masked model's predict the token at p
    itself. `exclude`: ids given no probability before the softmax (the mask token: a masked model never has
    to put it back, and dropping it only moves probability onto real tokens). `greedy`: each row's result is
    (log-probabilities, bool tensor: the token is the argmax there)."""
    results: list[torch.Tensor | None] = [None] * len(rows)
    wanted = [[position for position, _ in row_targets] for row_targets in targets]
    for batch, logits, index in _batch_logits(model, rows, batch_tokens, wanted):
        where_r, where_p, tokens, owners = [], [], [], []
        for r, i in enumerate(batch):
            for position, token in targets[i]:
                where_r.append(r)
                where_p.append(position)
                tokens.append(token)
            owners.append(len(targets[i]))
        picked = logits[index[torch.tensor(where_r, dtype=torch.long, device=logits.device),
                              torch.tensor(where_p, dtype=torch.long, device=logits.device)]].float()
        if exclude:
            picked[:, list(exclude)] = float("-inf")
        chosen = torch.tensor(tokens, dtype=torch.long, device=picked.device)
        lp = scoring.log_probs(picked).gather(-1, chosen[:, None])[:, 0].double().cpu()
        if greedy:
            is_max = (picked.argmax(-1) == chosen).cpu()
            for i, part, hits in zip(batch, lp.split(owners), is_max.split(owners)):
                results[i] = (part, hits)
        else:
            for i, part in zip(batch, lp.split(owners)):
                results[i] = part
        if advance is not None:
            advance(len(batch))
    return results  # type: ignore[return-value]


def top_tokens(model, rows: Sequence[Sequence[int]], positions: Sequence[int], *, batch_tokens: int = 4096
               ) -> list[torch.Tensor]:
    """For each row, the log-softmax (float32) over the vocabulary at `positions[i]`."""
    results: list[torch.Tensor | None] = [None] * len(rows)
    for batch, logits, index in _batch_logits(model, rows, batch_tokens, [[p] for p in positions]):
        for r, i in enumerate(batch):
            results[i] = scoring.log_probs(logits[index[r, positions[i]]]).cpu()
    return results  # type: ignore[return-value]


def mean_hidden(model, rows: Sequence[Sequence[int]], spans: Sequence[tuple[int, int]], *,
                batch_tokens: int = 4096, advance: Callable[[int], None] | None = None) -> list[torch.Tensor]:
    """For each row, the last hidden state (float64) summed over positions spans[i] = (start, end), and the
    count, as a tensor [D + 1] (sum, then count), so that rows of one text can be pooled together."""
    results: list[torch.Tensor | None] = [None] * len(rows)
    for batch in _batches([len(r) for r in rows], max(1, batch_tokens)):
        ids, valid = _padded(model, rows, batch)
        with torch.inference_mode():
            hidden = model(ids, attention_mask=valid).hidden
        for r, i in enumerate(batch):
            start, end = spans[i]
            total = hidden[r, start:end].double().sum(0).cpu()
            results[i] = torch.cat([total, torch.tensor([float(end - start)], dtype=torch.float64)])
        if advance is not None:
            advance(len(batch))
    return results  # type: ignore[return-value]


def same_word(tokenizer, vocab_size: int, ids: Sequence[int]) -> list[bool]:
    """same[j]: token j goes on with the word token j - 1 is part of ("ting" after " wai", "##s" after
    "cat"); a word opening glued to punctuation ('"' then "Hello") starts a new word."""
    classes = tokenizer.token_classes(vocab_size)
    wordish = classes.word_start_spaced | classes.word_start_bare | classes.word_continue
    same = [False] * len(ids)
    for j in range(1, len(ids)):
        same[j] = bool(classes.word_continue[ids[j]]) and bool(wordish[ids[j - 1]])
    return same
