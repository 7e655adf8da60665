"""Continuing a text with a causal model and its KV cache: greedy, sampling (temperature, top-k, top-p),
beam search, repetition penalty, stop strings, and streaming that never splits a UTF-8 character.

`stream_text` and `generate` take a loaded Model (they need its tokenizer); `generate_ids` and `beam_search`
work on ids with anything called like the network (a Model, a Transformer) that returns an Output and has
`config` and `new_cache`.
"""

from __future__ import annotations

import codecs
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from . import scoring
from .errors import ClozelmError
from .model import native_step, packed, step

# Generations of this many new tokens or more decode through compiled steps unless told (`Sampling.compile`), on
# CPUs where that was measured faster (`compiled_by_default`): the compile takes seconds (2-3 with inductor's disk
# cache warm, 5-9 without, on the machines measured), which a long generation repays.
COMPILE_FROM_TOKENS = 1000


@dataclass
class Sampling:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy (deterministic)
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    repetition_penalty: float = 1.0  # CTRL's rule: >1 discourages tokens already in the text
    seed: int | None = None
    stop_at_eos: bool = True
    # Each layer of a one-token step as one compiled graph (on the CPU; model/step.py).
    # None: for generations of COMPILE_FROM_TOKENS new tokens or more, where the model allows it and
    # `compiled_by_default` says so.
    compile: bool | None = None

    def check(self) -> None:
        if self.max_new_tokens < 1:
            raise ClozelmError("max new tokens must be at least 1")
        if self.compile is not None and not isinstance(self.compile, bool):
            raise ClozelmError(f"compile must be true, false or none, not {self.compile!r}")
        finite = all(math.isfinite(x) for x in (self.temperature, self.top_p, self.repetition_penalty))
        if not finite or not self.temperature >= 0 or self.top_k < 0 or not 0 < self.top_p <= 1 or \
                not self.repetition_penalty > 0:  # written so that NaN fails every test
            raise ClozelmError("need temperature >= 0, top-k >= 0, 0 < top-p <= 1, repetition penalty > 0")


def unused_settings(sampling: Sampling, beams: int) -> tuple[str, list[str]] | None:
    """The settings a request gives that its decoding would not use, as (why, Sampling field names), or None:
    a beam search samples nothing, and greedy decoding (temperature 0) no top-k, top-p or seed."""
    given = [name for name, used in (("temperature", sampling.temperature > 0), ("top_k", sampling.top_k > 0),
                                     ("top_p", sampling.top_p < 1), ("repetition_penalty", sampling.repetition_penalty != 1),
                                     ("seed", sampling.seed is not None)) if used]
    if beams > 1 and given:
        return "beams", given
    shaping = [name for name in given if name in ("top_k", "top_p", "seed")]
    if shaping and sampling.temperature == 0:
        return "greedy", shaping
    return None


def can_generate(model) -> bool:
    """Whether a loaded model can continue a text: a causal LM with a head, and a lossless tokenizer (the
    stream joins the bytes of the tokens as they come)."""
    tok = model.tokenizer
    return bool(model.config.causal and model.config.head is not None and tok is not None and tok.lossless)


def _check_model_and_budget(model, max_new_tokens: int) -> None:
    if not model.config.causal or model.config.head is None:
        raise ClozelmError("generation needs a causal language model (this one is bidirectional or headless: use fill)")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ClozelmError(f"max new tokens must be a whole number of at least 1, not {max_new_tokens!r}")
    n_ctx = model.config.n_positions
    if max_new_tokens >= n_ctx:
        raise ClozelmError(f"cannot generate {max_new_tokens} tokens with a {n_ctx}-token context (at most "
                           f"{n_ctx - 1}, which leaves one token of the prompt)")


def _window(model, prompt_ids: list[int], max_new_tokens: int, fixed: int = 0) -> tuple[list[int], int]:
    """Keep the end of a prompt that, with the new tokens, would not fit the context; the first `fixed` ids (a BOS
    the tokenizer puts first) stay in front of it."""
    _check_model_and_budget(model, max_new_tokens)
    if not prompt_ids:
        raise ClozelmError("empty prompt")
    n_ctx = model.config.n_positions
    keep = n_ctx - max_new_tokens
    dropped = max(0, len(prompt_ids) - keep)
    if dropped:  # said, as fill and heads say it: the continuation follows only the end of the prompt
        print(f"clozelm: note: prompt longer than the model's {n_ctx}-token context less {max_new_tokens} new tokens: "
              f"kept its last {keep - fixed} tokens ({dropped} dropped)", file=sys.stderr)
        return prompt_ids[:fixed] + prompt_ids[fixed + dropped:], dropped
    return prompt_ids, 0


def _known_only(logits: torch.Tensor, known: int | None) -> torch.Tensor:
    """`logits` [..., V] with the ids at or past `known` (output rows no token of the tokenizer has, as in Qwen2's
    padded matrix) made impossible."""
    if known is None or known >= logits.size(-1):
        return logits
    return logits.index_fill(-1, torch.arange(known, logits.size(-1), device=logits.device), float("-inf"))


@torch.inference_mode()
def generate_ids(model, prompt_ids: list[int], max_new_tokens: int = 64, *, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0, seed: int | None = None,
                 eos_id: int | None = None, lookahead: int = 6, known: int | None = None,
                 compile: bool | None = None) -> Iterator[int]:
    """Yields new token ids one at a time (stops after eos_id, which it yields); ids at or past `known` (output
    rows no token has) are never produced. compile: as `Sampling.compile`.

    Greedy decoding drafts up to `lookahead` tokens by finding the last few tokens earlier in the text
    and proposing what followed them there (prompt-lookup decoding), then checks the whole draft in one
    forward pass and keeps the part the model agrees with. The output is the greedy output either way;
    on one CPU the check costs about one token's time because decoding is bound by reading the weights,
    so every accepted draft token is nearly free; rejected ones are not where the weights are few or the
    products bound by arithmetic, so a draft grows by two tokens (up to `lookahead`) after one accepted whole and
    shrinks by one (down to one) after one that was not. `lookahead=0` turns it off. (In bf16, int8 and int4 a step
    that reads the draft rounds differently from one that reads a single token, so a near tie may break the
    other way.)
    """
    prompt_ids, _ = _window(model, list(prompt_ids), max_new_tokens)
    cache = model.new_cache(1, len(prompt_ids) + max_new_tokens + lookahead + 1)
    if _compiles(model, compile, max_new_tokens):
        cache.compiled = True  # this generation's one-token steps only (model/step.py)
    logits = _known_only(model(torch.tensor([prompt_ids]), cache=cache, last_logits_only=True).logits[0, -1], known)
    if temperature <= 0 and repetition_penalty == 1.0 and lookahead > 0:
        yield from _greedy_with_lookup(model, cache, list(prompt_ids), logits, max_new_tokens, eos_id, lookahead, known)
        return
    # Tokens are picked on the CPU whatever the model's device: a seed then gives the same draws everywhere.
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    seen = torch.zeros(model.config.vocab_size, dtype=torch.bool)
    seen[torch.tensor(prompt_ids)] = True
    for i in range(max_new_tokens):
        token = pick_token(logits.float().cpu(), temperature, top_k, top_p, generator,
                           seen if repetition_penalty != 1.0 else None, repetition_penalty)
        yield token
        if token == eos_id or i == max_new_tokens - 1:
            return
        seen[token] = True
        logits = _known_only(model(torch.tensor([[token]]), cache=cache, last_logits_only=True).logits[0, -1], known)


def _network(model):
    return getattr(model, "network", model)  # a loaded Model or the Transformer itself


def _compiles(model, compile: bool | None, max_new_tokens: int) -> bool:
    """Whether this generation decodes through compiled steps; refuses `compile=True` where they cannot run."""
    if compile is False or (compile is None and (max_new_tokens < COMPILE_FROM_TOKENS or not compiled_by_default(model))):
        return False
    if one_call_steps(model):
        return False  # the one-call step serves it: compiled steps would not run, nor need a C++ compiler
    why_not = step.fits(_network(model))
    if compile and why_not:
        raise ClozelmError(why_not)
    return why_not is None


def compiled_by_default(model=None) -> bool:
    """Whether `model`'s decoding compiles its steps when nobody says (long generations, a server): where they
    were measured faster than eager ones (docs/performance.md): on CPUs without AMX, for fp32 and bf16 weights, and
    for int8 and int4 ones with AVX-512 or where their graphs call model/native.c (with AVX2 alone inductor's int8
    reductions were 2-4x slower than the eager kernels). On a Xeon with AMX only when asked for: there they were
    slower than the one-call step in every format, and about as fast as eager steps. Never where the one-call step
    serves the model (`one_call_steps`), which is faster still and compiles nothing. Without a model: for fp32
    weights."""
    if packed.has_amx() or (model is not None and one_call_steps(model)):
        return False
    modules = () if model is None else _network(model).modules()
    quantized = {kind for kind in (getattr(module, "weight_format", None) for module in modules)
                 if packed.QUANTIZED.get(kind)}
    return not quantized or packed.has_avx512() or packed.native_products()


def one_call_steps(model) -> bool:
    """Whether `model`'s one-token steps (and a token's draft) go through every layer in one call to model/native.c
    (model/native_step.py), on x86 CPUs where its products run: then there are no compiled steps to ask for."""
    return native_step.serves(_network(model))


def compile_refusal(model) -> str | None:
    """Why `model`'s generations cannot decode through compiled steps, or None where they can."""
    return step.fits(_network(model))


def compile_steps(model) -> None:
    """Compile `model`'s one-token steps now (seconds; once per process and weight signature), so that its first
    compiled generation does not wait for them: a server does this before it answers."""
    if compile_refusal(model) is not None or one_call_steps(model):
        return  # nothing to compile (torch.compile failed earlier in this process, say), or no compiled step to run
    prompt = [i % model.config.vocab_size for i in range(2)]  # one graph serves every cache length (model/step.py)
    for _ in generate_ids(model, prompt, 4, lookahead=0, compile=True):
        pass


def _greedy_with_lookup(model, cache, tokens, logits, max_new_tokens, eos_id, lookahead, known=None):
    token, produced, budget = int(logits.argmax()), 0, lookahead
    while True:
        yield token
        produced += 1
        if token == eos_id or produced == max_new_tokens:
            return
        tokens.append(token)
        draft = _lookup_draft(tokens, min(budget, max_new_tokens - produced - 1))
        step = _known_only(model(torch.tensor([[token] + draft]), cache=cache).logits[0], known)  # [1 + len(draft), V]
        predicted = step.argmax(-1).tolist()
        accepted = 0
        while accepted < len(draft) and draft[accepted] == predicted[accepted]:
            accepted += 1
        cache.truncate(cache.length - (len(draft) - accepted))  # forget the rejected draft tokens
        if draft:  # drafts grow while the text repeats and shrink where it does not: a rejected row is not free
            budget = min(lookahead, budget + 2) if accepted == len(draft) else max(1, budget - 1)
        for t in draft[:accepted]:
            yield t
            produced += 1
            tokens.append(t)
            if t == eos_id:
                return
        token = predicted[accepted]


def _lookup_draft(tokens: list[int], k: int, longest: int = 3) -> list[int]:
    """What followed the most recent earlier occurrence of the text's last n tokens (n = 3, 2, 1)."""
    if k <= 0:
        return []
    for n in range(min(longest, len(tokens) - 1), 0, -1):
        tail = tokens[-n:]
        for start in range(len(tokens) - n - 1, -1, -1):
            if tokens[start:start + n] == tail:
                return tokens[start + n:start + n + k]
    return []


def pick_token(logits: torch.Tensor, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, generator=None,
               seen: torch.Tensor | None = None, repetition_penalty: float = 1.0) -> int:
    if seen is not None:
        penalised = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
        big = torch.finfo(logits.dtype).max  # a tiny penalty must not make a logit infinite (softmax -> NaN)
        logits = torch.where(seen, penalised, logits).clamp(-big, big)
    if temperature <= 0:
        return int(logits.argmax())
    scaled = logits / temperature
    if not torch.isfinite(scaled).all():  # a temperature so small that dividing overflows: greedy, its limit
        return int(logits.argmax())
    logits = scaled
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(descending=True)
        probs = sorted_logits.softmax(-1)
        outside = probs.cumsum(-1) - probs >= top_p  # keep the smallest prefix whose mass reaches top_p
        outside[0] = False  # and always the best token (a top_p too small for float32 would keep none)
        logits = logits.masked_fill(torch.zeros_like(outside).scatter(0, order, outside), float("-inf"))
    return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))


@torch.inference_mode()
def beam_search(model, prompt_ids: list[int], beams: int = 4, max_new_tokens: int = 32,
                eos_id: int | None = None, length_penalty: float = 1.0, known: int | None = None) -> list[int]:
    """The most likely continuation under a beam of `beams`; finished beams scored by sum log p / len^penalty."""
    prompt_ids, _ = _window(model, list(prompt_ids), max_new_tokens)
    cache = model.new_cache(1, len(prompt_ids) + max_new_tokens)
    logits = model(torch.tensor([prompt_ids]), cache=cache, last_logits_only=True).logits[:, -1]
    logp = scoring.log_probs(_known_only(logits, known))
    hyps, scores = [[]], torch.zeros(1, device=logp.device)
    finished: list[tuple[float, list[int]]] = []
    for step in range(max_new_tokens):
        values, rows, tokens = scoring.beam_step(scores[:, None] + logp, 2 * beams)
        keep_rows, new_hyps, new_scores = [], [], []
        for score, row, token in zip(values.tolist(), rows.tolist(), tokens.tolist()):
            seq = hyps[row] + [token]
            if token == eos_id or step == max_new_tokens - 1:
                finished.append((score / len(seq) ** length_penalty, seq))
            else:
                keep_rows.append(row), new_hyps.append(seq), new_scores.append(score)
            if len(new_hyps) == beams:
                break
        if not new_hyps or len(finished) >= beams:
            break
        hyps, scores = new_hyps, torch.tensor(new_scores, device=logp.device)
        # Every beam continues the one prompt: its keys and values are shared (KVCache.fork), not copied at each step.
        cache = cache.fork(len(keep_rows)) if step == 0 else cache.select(torch.tensor(keep_rows))
        logits = model(torch.tensor([[h[-1]] for h in hyps]), cache=cache, last_logits_only=True).logits[:, -1]
        logp = scoring.log_probs(_known_only(logits, known))
    if not finished:
        finished = [(s / max(1, len(h)) ** length_penalty, h) for s, h in zip(scores.tolist(), hyps)]
    return max(finished, key=lambda f: f[0])[1]


def stream_text(model, prompt: str, sampling: Sampling | None = None, stop: list[str] = (),
                beams: int = 1) -> Iterator[str]:
    """Text pieces as tokens arrive. Bytes of a character split across tokens are held back until it is
    complete; text that might be the start of a stop string is held back until it is not. Everything is checked
    before this returns (a caller may print the prompt then); sampled and greedy tokens come as the pieces are
    read, a beam search's (`beams` > 1) all at once, since its best text is known only at its end."""
    sampling = sampling or Sampling()
    sampling.check()
    _check_model_and_budget(model, sampling.max_new_tokens)
    tok = model.tokenizer
    if tok is None or not tok.lossless:
        # Streaming joins token bytes into text: that needs a tokenizer whose tokens spell the text exactly.
        raise ClozelmError("generation needs a tokenizer that spells text exactly (a byte-level BPE)")
    stop = _stop_strings(stop)
    # What the model's own tokenizer puts first (Llama 3's BOS), as the model saw every text in training; a prompt
    # of nothing but whitespace starts a new document.
    start = tok.prompt_prefix()
    prompt_ids = start + tok.encode(prompt)
    if not start and (len(prompt_ids) == 0 or not prompt.strip()):
        start = tok.frame_tokens(causal=True)[0]
        prompt_ids = start + prompt_ids
    prompt_ids, _ = _window(model, prompt_ids, sampling.max_new_tokens, fixed=len(start))  # checked here, not later
    eos = tok.eos_id if sampling.stop_at_eos else None
    known = tok.vocab_size
    if beams > 1:
        if sampling.compile:
            raise ClozelmError("compiled decoding steps read one row, and a beam search reads one per beam: "
                               "leave out compile or beams")
        ids = iter(beam_search(model, prompt_ids, beams, sampling.max_new_tokens, eos, known=known))
    else:
        _compiles(model, sampling.compile, sampling.max_new_tokens)  # refused here, before the caller prints
        ids = generate_ids(model, prompt_ids, sampling.max_new_tokens, temperature=sampling.temperature,
                           top_k=sampling.top_k, top_p=sampling.top_p, repetition_penalty=sampling.repetition_penalty,
                           seed=sampling.seed, eos_id=eos, known=known, compile=sampling.compile)
    return _pieces(ids, tok, eos, stop)


def _stop_strings(stop) -> list[str]:
    """Stop strings as a list: one string is one stop string (not its characters); an empty one is refused."""
    stop = [stop] if isinstance(stop, str) else list(stop or ())
    if any(not isinstance(s, str) or not s for s in stop):
        raise ClozelmError("stop strings must be non-empty strings")
    return stop


def _pieces(ids: Iterator[int], tok, eos: int | None, stop: list[str]) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    held = ""
    hold = max((len(s) for s in stop), default=1) - 1
    for token in ids:
        if token == eos:
            break
        held += decoder.decode(tok.token_bytes(token))
        hits = [held.find(s) for s in stop if s in held]
        if hits:
            yield held[:min(hits)]
            return
        if len(held) > hold:
            cut = len(held) - hold
            yield held[:cut]
            held = held[cut:]
    held += decoder.decode(b"", final=True)
    if held:
        yield held


def generate(model, prompt: str, **options) -> str:
    """The continuation of `prompt` as one string (see `stream_text` for the options)."""
    stop = options.pop("stop", ())
    beams = options.pop("beams", 1)
    return "".join(stream_text(model, prompt, Sampling(**options), stop=stop, beams=beams))
