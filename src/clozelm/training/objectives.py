"""Training objectives: each turns a window of corpus tokens into (input ids, labels) for one example, and a
list of windows into a `Batch` (plus per-token weights for mdlm, per-row attention for hybrid).

    clm  next-token prediction (GPT-2). Window of T+1 tokens: input = w[:-1], labels = w[1:].
    mlm  BERT masking. Window of T tokens; exactly round(15%) of the non-special tokens of each
         sequence (at least one) are chosen; each chosen token independently becomes [MASK] with
         probability 0.8, a random ordinary token with 0.1, or stays itself with 0.1. Labels are the
         original ids at the chosen positions and IGNORE (-100) elsewhere, so the loss covers only them.
    fim  fill-in-the-middle (Bavarian et al. 2022) for a causal model, applied at the context level:
         the window of T+1 tokens is cut into its documents at the separator token, each document into
         stretches of uniform random length in [1, T+1], and each stretch independently, with
         probability `fim_rate` (0.5), is split into prefix/middle/suffix at two cut points drawn
         uniformly over its *token* boundaries and reordered as
             PSM  <|fim_prefix|> prefix <|fim_suffix|> suffix <|fim_middle|> middle <sep>
             SPM  <|fim_prefix|> <|fim_suffix|> suffix <|fim_middle|> prefix middle <sep>
         (SPM with probability `spm_rate` (0.5), in the paper's appendix-D form, where prefix runs
         straight into middle). Stretches left alone run on as plain text. The separator closes every
         middle: it is how the model learns to say "the middle is complete", which is what fill scores a
         candidate by. Why stretches: the paper's documents are mostly shorter than its context, so its
         middles end all over the window. Here documents (chapters) are several windows long; reordered
         whole, a window's middle would always end at the window's end, and the model would learn to
         close a middle by its position instead of by the text (at 1.1k steps that model gave the
         separator after a complete middle e^-8). A reordered stretch is 3-4 tokens longer; the one that
         would run past the end of the window is shortened *before* it is reordered, so no middle is
         ever cut off, and the window stays T+1 tokens. Then as clm, loss on every token.
         Why token-level cut points: the shards are already tokenized, and re-tokenizing each sample to
         cut at characters would cost more than the model step on this CPU; it also matches how
         clozelm's FIM fill encodes the text left and right of a blank separately. The price is that
         the model never sees a cut inside a token.
    hybrid  GPT-BERT (Charpentier & Samuel 2024): one causal-by-config network trained on causal and masked
         rows. Window of T+1 tokens. Each row is causal with probability `hybrid_causal_share` (default
         1/16, the paper's best ratio of 1 causal : 15 masked), drawn from the example's own RNG: then it is
         exactly clm. Otherwise it is masked next-token prediction: input = w[:-1] with mlm's rule (exactly
         round(mask_rate) of the non-special tokens at positions 1..T-1, 80/10/10) applied, and the label of a
         hidden token at position i sits at position i-1. The output at i-1 predicts token i in both kinds of
         row, so one head serves both, and the model stays a next-token predictor. A masked row attends both
         ways: the batch carries which rows are causal (`Batch.causal`), and the trainer runs the network
         with causal=False and a per-row additive mask that hides the future from the causal rows (one
         forward pass per micro-batch, whatever the mix). The loss is the mean over every labelled position
         of the global batch, causal and masked alike (a causal row labels T positions, a masked one about
         mask_rate x T, so the causal rows give about 30% of the gradient at 1/16 and 15%). That is the
         released GPT-BERT script's `--token_weighted_loss` variant; its default averages each kind of row
         on its own and weighs the two by their share of rows.
    mdlm    masked diffusion (MDLM, Sahoo et al. 2024), bidirectional. Window of T tokens. Per row a mask
         rate t = eps + (1 - eps) u, u ~ U[0, 1) (eps = 1e-3: the weight 1/t stays finite); each
         non-special token is replaced by the mask token independently with probability t; the loss is the
         cross-entropy at the hidden tokens weighted 1/t, divided by the number of non-special tokens (not
         of hidden ones). That is the Monte Carlo estimate of the ELBO per token: E_t[(1/t) sum over hidden
         i of -log p(x_i | visible)] >= -log p(x) for the model that unmasks in a random order (the same
         bound `clozelm eval` reports for masked models), so its held-out loss is on the causal models'
         scale (nats per token), as an upper bound.

Every example draws from its own numpy Generator, seeded by (run seed, example number), so a batch is a
pure function of the seed and the position in the data: resuming, or splitting a batch over DDP ranks,
yields the same examples.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ClozelmError
from ..tokenizers.base import FIM_TOKENS
from .data import separator_id

IGNORE = -100
OBJECTIVES = ("clm", "mlm", "fim", "hybrid", "mdlm")
BIDIRECTIONAL = ("mlm", "mdlm")  # trained and read with bidirectional attention (the rest are causal by config)
HYBRID_CAUSAL_SHARE = 1 / 16  # GPT-BERT's best ratio: 1 causal row for 15 masked ones
MDLM_MIN_RATE = 1e-3  # mdlm's mask rates are drawn from [MDLM_MIN_RATE, 1): weights 1/t stay below 1000


@dataclass(frozen=True)
class Batch:
    """One micro-batch of an objective. It unpacks as (inputs, labels), which is all clm, mlm and fim need."""

    inputs: torch.Tensor  # [B, T] int64
    labels: torch.Tensor  # [B, T] int64, IGNORE where there is nothing to predict
    weights: torch.Tensor | None = None  # [B, T] float32, each labelled position's weight in the loss (None: 1)
    causal: torch.Tensor | None = None  # [B] bool: which rows attend causally (None: as the model's config says)
    tokens: int | None = None  # what the summed loss is divided by (None: the number of labelled positions)

    def __iter__(self):
        return iter((self.inputs, self.labels))

    @property
    def count(self) -> int:
        """The loss's denominator: labelled positions, or (mdlm) every token the bound is over."""
        return int((self.labels != IGNORE).sum()) if self.tokens is None else self.tokens

    def to(self, device, non_blocking: bool = False) -> "Batch":
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return replace(self, inputs=move(self.inputs), labels=move(self.labels), weights=move(self.weights),
                       causal=move(self.causal))


def _stacked(arrays) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays).astype(np.int64))


class Objective:
    name = ""
    extra_tokens = 0  # a window holds seq_len + extra_tokens corpus tokens
    causal = True
    sparse_labels = False  # True when few positions carry a label: the trainer then runs the head only there

    def example(self, window: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def batch(self, windows: list[np.ndarray], rngs: list[np.random.Generator]) -> Batch:
        """input_ids [B, T] and labels [B, T] (IGNORE where there is nothing to predict), as a Batch."""
        pairs = [self.example(w, r) for w, r in zip(windows, rngs)]
        return Batch(_stacked([p[0] for p in pairs]), _stacked([p[1] for p in pairs]))


class CausalLM(Objective):
    name = "clm"
    extra_tokens = 1

    def example(self, window, rng):
        return window[:-1], window[1:]


class MaskedLM(Objective):
    name = "mlm"
    causal = False
    sparse_labels = True

    def __init__(self, vocab_size: int, special_ids, mask_id: int, mask_rate: float = 0.15):
        self.mask_id, self.mask_rate = mask_id, mask_rate
        self.special = np.zeros(vocab_size, dtype=bool)
        self.special[list(special_ids)] = True
        self.ordinary = np.flatnonzero(~self.special)  # the "random token" replacements are never specials

    def choose(self, window: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Positions to predict: exactly round(mask_rate * non-special) of them, at least one."""
        candidates = np.flatnonzero(~self.special[window])
        if len(candidates) == 0:
            return candidates
        n = max(1, int(self.mask_rate * len(candidates) + 0.5))
        return np.sort(rng.choice(candidates, size=n, replace=False))

    def example(self, window, rng):
        chosen = self.choose(window, rng)
        inputs = window.copy()
        labels = np.full_like(window, IGNORE)
        labels[chosen] = window[chosen]
        action = rng.random(len(chosen))
        to_mask = chosen[action < 0.8]
        to_random = chosen[(action >= 0.8) & (action < 0.9)]
        inputs[to_mask] = self.mask_id
        inputs[to_random] = rng.choice(self.ordinary, size=len(to_random))
        return inputs, labels


class FillInMiddle(Objective):
    name = "fim"
    extra_tokens = 1

    def __init__(self, prefix_id: int, suffix_id: int, middle_id: int, sep_id: int,
                 fim_rate: float = 0.5, spm_rate: float = 0.5):
        self.pre, self.suf, self.mid, self.sep = prefix_id, suffix_id, middle_id, sep_id
        self.fim_rate, self.spm_rate = fim_rate, spm_rate

    def permute(self, body: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One document (without its separator) in FIM order; cut points uniform over token boundaries."""
        a, b = np.sort(rng.integers(0, len(body) + 1, size=2))
        prefix, middle, suffix = body[:a], body[a:b], body[b:]
        s = np.array
        if rng.random() < self.spm_rate:
            return np.concatenate([s([self.pre, self.suf]), suffix, s([self.mid]), prefix, middle])
        return np.concatenate([s([self.pre]), prefix, s([self.suf]), suffix, s([self.mid]), middle])

    def transform(self, window: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The window with FIM applied per stretch, len(window) tokens; every reordered middle is closed."""
        n = len(window)
        ends = np.flatnonzero(window == self.sep) + 1  # each document ends just after its separator
        pieces, used, start = [], 0, 0
        for end in [*ends.tolist(), n]:
            if end <= start:
                continue
            doc, start = window[start:end], end
            has_sep = doc[-1] == self.sep
            body = doc[:-1] if has_sep else doc
            at = 0
            while at < len(body) and used < n:
                stretch = body[at:at + int(rng.integers(1, n + 1))]
                at += len(stretch)
                closes_doc = has_sep and at == len(body)
                room = n - used - 4  # stretch tokens that fit beside 3 sentinels and the closing separator
                if rng.random() < self.fim_rate and room > 0:
                    piece = np.concatenate([self.permute(stretch[:room], rng), [self.sep]])  # ends the document too if closes_doc
                else:
                    piece = np.concatenate([stretch, [self.sep]]) if closes_doc else stretch
                pieces.append(piece)
                used += len(piece)
            if not len(body) and used < n:
                pieces.append(doc)  # an empty document: its separator alone
                used += len(doc)
            if used >= n:
                break
        return np.concatenate(pieces)[:n]

    def example(self, window, rng):
        seq = self.transform(window, rng)
        return seq[:-1], seq[1:]


class Hybrid(Objective):
    name = "hybrid"
    extra_tokens = 1
    causal = True  # by config; masked rows are read bidirectionally (Batch.causal)
    sparse_labels = True  # most rows are masked, with ~mask_rate of their positions labelled

    def __init__(self, vocab_size: int, special_ids, mask_id: int, mask_rate: float = 0.15,
                 causal_share: float = HYBRID_CAUSAL_SHARE):
        self.masked = MaskedLM(vocab_size, special_ids, mask_id, mask_rate)
        self.causal_share = causal_share

    def example(self, window, rng):
        """(inputs, labels, whether the row is causal)."""
        if rng.random() < self.causal_share:
            return window[:-1], window[1:], True
        # mlm's masking over input positions 1..T-1 (nothing before position 0 could predict it), each label
        # moved one position left: the output at i-1 predicts the hidden token at i.
        inputs, labels = self.masked.example(window[1:-1], rng)
        return np.concatenate([window[:1], inputs]), np.append(labels, IGNORE), False

    def batch(self, windows, rngs) -> Batch:
        rows = [self.example(w, r) for w, r in zip(windows, rngs)]
        return Batch(_stacked([r[0] for r in rows]), _stacked([r[1] for r in rows]),
                     causal=torch.tensor([r[2] for r in rows], dtype=torch.bool))


class MaskedDiffusion(Objective):
    name = "mdlm"
    causal = False
    sparse_labels = True

    def __init__(self, vocab_size: int, special_ids, mask_id: int, min_rate: float = MDLM_MIN_RATE):
        self.mask_id, self.min_rate = mask_id, min_rate
        self.special = np.zeros(vocab_size, dtype=bool)
        self.special[list(special_ids)] = True

    def example(self, window, rng):
        """(inputs, labels, mask rate t, number of tokens that could have been hidden)."""
        candidates = np.flatnonzero(~self.special[window])
        t = self.min_rate + (1.0 - self.min_rate) * rng.random()
        hidden = candidates[rng.random(len(candidates)) < t]
        inputs = window.copy()
        labels = np.full_like(window, IGNORE)
        labels[hidden] = window[hidden]
        inputs[hidden] = self.mask_id
        return inputs, labels, t, len(candidates)

    def batch(self, windows, rngs) -> Batch:
        rows = [self.example(w, r) for w, r in zip(windows, rngs)]
        labels = _stacked([r[1] for r in rows])
        rates = torch.tensor([r[2] for r in rows], dtype=torch.float64)
        weights = torch.where(labels != IGNORE, (1.0 / rates)[:, None], 0.0).float()
        return Batch(_stacked([r[0] for r in rows]), labels, weights=weights, tokens=sum(r[3] for r in rows))


def make_objective(name: str, tok, vocab_size: int, fim_rate: float = 0.5, spm_rate: float = 0.5,
                   mask_rate: float = 0.15, hybrid_causal_share: float = HYBRID_CAUSAL_SHARE) -> Objective:
    """The objective `name` for tokenizer `tok`; a clear error when the tokenizer lacks a token it needs."""
    if name not in OBJECTIVES:
        raise ClozelmError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}")
    source = getattr(tok, "source", None) or "the tokenizer"
    sep = separator_id(tok)
    if sep is None:
        raise ClozelmError(f"tokenizer {source} lacks a document separator: add <|endoftext|> to its special tokens")
    if name == "clm":
        return CausalLM()
    if name in ("mlm", "hybrid", "mdlm"):
        if tok.mask_id is None:
            raise ClozelmError(f"tokenizer {source} lacks a mask token needed by --objective {name}; retrain it with "
                               "--special '<|mask|>'")
        # Ids past the tokenizer's (a model's vocabulary padded to a round size) are never drawn as BERT's random
        # replacement tokens: no text has them, so their embeddings never learned anything.
        specials = [*tok.special_tokens.values(), *range(tok.vocab_size, vocab_size)]
        if name == "hybrid":
            return Hybrid(vocab_size, specials, tok.mask_id, mask_rate, hybrid_causal_share)
        if name == "mdlm":
            return MaskedDiffusion(vocab_size, specials, tok.mask_id)
        return MaskedLM(vocab_size, specials, tok.mask_id, mask_rate)
    fim = tok.fim_ids
    if fim is None:
        missing = [t for t in FIM_TOKENS if t not in tok.special_tokens]
        raise ClozelmError(f"tokenizer {source} lacks special token(s) {', '.join(missing)} needed by --objective fim; "
                           f"retrain it with --special for each")
    return FillInMiddle(fim.prefix, fim.suffix, fim.middle, sep_id=sep, fim_rate=fim_rate, spm_rate=spm_rate)


def loss_sum(logits: torch.Tensor, labels: torch.Tensor,
             weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy over labelled positions, each times its weight if `weights` is given, their count).
    Summing, not averaging, lets the trainer divide by the count of the whole global batch, so accumulation
    and DDP splits agree exactly."""
    labels = labels.reshape(-1)
    keep = labels != IGNORE
    logits = logits.reshape(-1, logits.size(-1))
    if weights is not None:
        weights = weights.reshape(-1)
    if not bool(keep.all()):  # MLM: only ~15% of positions count, so skip the rest of the softmax
        logits, labels = logits[keep], labels[keep]
        weights = None if weights is None else weights[keep]
    if weights is None:
        return F.cross_entropy(logits.float(), labels, reduction="sum"), keep.sum()
    return (F.cross_entropy(logits.float(), labels, reduction="none") * weights.float()).sum(), keep.sum()
