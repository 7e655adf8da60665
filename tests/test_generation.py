"""Generation: decoding rules, streaming that never splits a character, stop strings."""

from types import SimpleNamespace

import pytest
import torch

from clozelm.errors import ClozelmError
from clozelm.generation import Sampling, beam_search, generate, generate_ids, pick_token, stream_text
from clozelm.model import ModelConfig, Output, Transformer, packed
from handbuilt import ScriptedLM, word_tokenizer


def tiny_model(vocab=50):
    torch.manual_seed(1)
    return Transformer(ModelConfig(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=2)).eval()


@torch.no_grad()
def sequence_logprob(model, prompt, continuation):
    ids = torch.tensor([prompt + continuation])
    logp = torch.log_softmax(model(ids).logits[0].float(), -1)
    return sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(continuation))


def test_top_k_1_and_tiny_top_p_are_greedy():
    model = tiny_model()
    greedy = list(generate_ids(model, [1, 2, 3], 10))
    assert list(generate_ids(model, [1, 2, 3], 10, temperature=1.0, top_k=1, seed=0)) == greedy
    assert list(generate_ids(model, [1, 2, 3], 10, temperature=1.0, top_p=1e-6, seed=0)) == greedy


def test_seed_makes_sampling_reproducible():
    model = tiny_model()
    a = list(generate_ids(model, [1, 2], 15, temperature=1.0, seed=7))
    b = list(generate_ids(model, [1, 2], 15, temperature=1.0, seed=7))
    c = list(generate_ids(model, [1, 2], 15, temperature=1.0, seed=8))
    assert a == b and a != c


def test_beam_search_finds_at_least_the_greedy_likelihood():
    model = tiny_model()
    prompt = [4, 5, 6]
    greedy = list(generate_ids(model, prompt, 6))
    beam = beam_search(model, prompt, beams=6, max_new_tokens=6)
    assert len(beam) == 6
    assert sequence_logprob(model, prompt, beam) >= sequence_logprob(model, prompt, greedy) - 1e-5
    assert beam_search(model, prompt, beams=1, max_new_tokens=6) == greedy


def test_beams_that_share_the_prompt_find_what_beams_holding_copies_of_it_find(monkeypatch):
    from clozelm.model.transformer import KVCache
    model = tiny_model()
    prompt = [int(t) for t in torch.randint(0, 50, (40,), generator=torch.Generator().manual_seed(3))]
    shared = beam_search(model, prompt, beams=4, max_new_tokens=12)
    monkeypatch.setattr(KVCache, "fork", lambda self, n: self.select(torch.zeros(n, dtype=torch.long)))
    assert beam_search(model, prompt, beams=4, max_new_tokens=12) == shared and len(shared) == 12


def test_repetition_penalty_lowers_seen_tokens():
    logits = torch.tensor([2.0, 1.9, -1.0])
    seen = torch.tensor([True, False, False])
    assert pick_token(logits) == 0
    assert pick_token(logits, seen=seen, repetition_penalty=1.3) == 1


def test_streaming_never_splits_a_utf8_character(tmp_path):
    tok = word_tokenizer(tmp_path, ["plain ascii words only"])
    text = "héllo 😀 wörld ✓"
    # one token per byte: the emoji's four bytes arrive in four separate tokens
    byte_ids = [next(i for i in range(256) if tok.token_bytes(i) == bytes([b])) for b in text.encode()]
    model = ScriptedLM(tok, byte_ids, prompt_len=len(tok.encode("say:")))
    model.eval()
    pieces = list(stream_text(model, "say:", Sampling(max_new_tokens=40)))
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert len(pieces) > 3  # it did stream


def test_stop_strings_cut_the_output(tmp_path):
    tok = word_tokenizer(tmp_path, ["one two. three"])
    ids = tok.encode(" one two. three")
    model = ScriptedLM(tok, ids, prompt_len=len(tok.encode("go")))
    assert generate(model, "go", max_new_tokens=20) == " one two. three"
    assert generate(model, "go", max_new_tokens=20, stop=["."]) == " one two"
    assert generate(model, "go", max_new_tokens=len(tok.encode(" one two"))) == " one two"


def test_lookup_drafting_gives_exactly_the_greedy_tokens():
    model = tiny_model(vocab=12)  # a small vocabulary makes the greedy output repeat, so drafts get accepted
    for prompt in ([1, 2, 3, 1, 2], [5], [7, 7, 7, 7, 8, 9]):
        plain = list(generate_ids(model, prompt, 40, lookahead=0))
        drafted = list(generate_ids(model, prompt, 40, lookahead=6))
        assert drafted == plain


def test_drafts_shrink_while_they_are_rejected():
    """Each token of this script follows its own earlier occurrence in the prompt with other tokens than the prompt
    had, so every draft is rejected: the drafts read shrink by one a pass down to one token, where a full lookahead
    was on offer each time (and the tokens stay the greedy ones)."""
    vocabulary = SimpleNamespace(vocab_size=64, eos_id=63)
    prompt, script = list(range(1, 41)), [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    model = ScriptedLM(vocabulary, script, prompt_len=len(prompt))
    rows, forward = [], model.forward
    model.forward = lambda ids, *args, **kwargs: rows.append(torch.as_tensor(ids).size(-1)) or forward(ids, *args,
                                                                                                      **kwargs)
    assert list(generate_ids(model, prompt, len(script), lookahead=6)) == script
    assert rows[1:] == [7, 6, 5, 4, 3, 2, 2, 2, 1]  # after the prompt's pass: a token and its draft (none last)


def test_cache_truncate_then_continue_matches_full_pass():
    model = tiny_model()
    ids = torch.randint(0, 50, (1, 12))
    with torch.no_grad():
        cache = model.new_cache(1, 20)
        model(ids[:, :8], cache=cache)
        model(torch.randint(0, 50, (1, 3)), cache=cache)  # a rejected draft
        cache.truncate(8)
        got = model(ids[:, 8:], cache=cache).logits
        want = model(ids).logits[:, 8:]
    assert (got - want).abs().max() <= 1e-5


class _Recording(torch.nn.Module):
    """A causal LM over `tokenizer` that records what it reads and always prefers id `favourite`."""

    def __init__(self, tokenizer, favourite: int, vocab_size: int | None = None, n_positions: int = 64):
        super().__init__()
        self.tokenizer, self.favourite, self.read = tokenizer, favourite, []
        self.config = ModelConfig(vocab_size=vocab_size or tokenizer.vocab_size, n_positions=n_positions, n_embd=8,
                                  n_layer=1, n_head=1)

    def new_cache(self, batch_size, max_len=None):
        return Transformer(self.config).new_cache(batch_size, max_len)

    def forward(self, input_ids, attention_mask=None, attentions=False, *, cache=None, last_logits_only=False, **_):
        self.read.append(input_ids[0].tolist())
        if cache is not None:
            cache.length += input_ids.size(1)
        logits = torch.zeros(input_ids.size(0), input_ids.size(1), self.config.vocab_size)
        logits[..., self.favourite] = 5.0
        return Output(logits=logits, hidden=logits)


def _llama_style_tokenizer(add_bos: bool):
    from clozelm.tokenizers.bpe import GPT2_SPLIT_PATTERN
    from clozelm.tokenizers.pretrained_bpe import PretrainedBPE
    return PretrainedBPE([], {"<|begin_of_text|>": 256, "<|end_of_text|>": 257}, {bytes([b]): b for b in range(256)},
                         split_pattern=GPT2_SPLIT_PATTERN, roles={"bos": "<|begin_of_text|>", "eos": "<|end_of_text|>"},
                         add_bos=add_bos)


def test_the_prompt_starts_as_the_model_s_own_tokenizer_starts_a_text():
    """Llama 3's tokenizer puts BOS before every text (HF's tokenizer(prompt) does): so does generation, and a
    prompt cut to fit the context keeps it in front; a tokenizer that adds nothing gets nothing."""
    for add_bos in (True, False):
        tok = _llama_style_tokenizer(add_bos)
        model = _Recording(tok, favourite=ord("x"))
        assert generate(model, "Hi", max_new_tokens=3) == "xxx"
        assert model.read[0] == ([256] if add_bos else []) + list(b"Hi")
    model = _Recording(_llama_style_tokenizer(True), favourite=ord("x"), n_positions=16)
    assert generate(model, "abcdefghijklmnopqrstuvwxyz", max_new_tokens=4) == "xxxx"
    assert model.read[0] == [256] + list(b"pqrstuvwxyz")  # BOS, then the prompt's last 11 of 16 - 4 tokens
    model = _Recording(_llama_style_tokenizer(False), favourite=ord("x"))
    generate(model, "", max_new_tokens=2)
    assert model.read[0] == [256]  # an empty prompt starts a new document: the frame's start (BOS, else EOS)


def test_ids_no_token_has_are_never_produced(tmp_path):
    """Output rows past the tokenizer's vocabulary (a matrix padded to a round size) are never picked, greedy,
    sampled or by the beam, even when the model prefers them."""
    tok = _llama_style_tokenizer(False)
    model = _Recording(tok, favourite=300, vocab_size=320)
    for options in ({}, {"temperature": 1.5, "seed": 0}, {"beams": 2}):
        text = generate(model, "Hi", max_new_tokens=3, **options)
        assert len(text.encode()) == 3 and all(b < 256 for b in text.encode())


def test_stop_is_a_string_or_strings_and_never_empty(tmp_path):
    tok = word_tokenizer(tmp_path, ["one two. three"])
    ids = tok.encode(" one two. three")
    model = ScriptedLM(tok, ids, prompt_len=len(tok.encode("go")))
    assert generate(model, "go", max_new_tokens=20, stop=". ") == " one two"  # one stop string, not ". " and " "
    for bad in ([""], "", [None]):
        with pytest.raises(ClozelmError, match="stop strings must be non-empty"):
            generate(model, "go", max_new_tokens=20, stop=bad)


def test_max_new_tokens_below_one_is_refused_before_any_work():
    model = tiny_model()
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ClozelmError, match="max new tokens"):
            list(generate_ids(model, [1, 2, 3], bad))


@pytest.mark.parametrize("amx,avx512,native,quantized_compiles", [
    (True, True, False, False), (False, True, False, True), (False, False, True, True), (False, False, False, False)])
def test_long_generations_compile_quantized_models_only_where_their_graphs_were_measured_faster(
        monkeypatch, amx, avx512, native, quantized_compiles):
    """int8/int4 graphs are faster than eager steps with AVX-512, or where they call model/native.c (AVX2 alone);
    inductor's own int8 reduction on AVX2 alone was slower. fp32 compiles wherever there is no AMX. (With the
    one-call step off: where it serves a model, nothing compiles, below.)"""
    from clozelm import generation
    monkeypatch.setenv("CLOZELM_NATIVE_STEP", "0")
    monkeypatch.setattr(packed, "has_amx", lambda: amx)
    monkeypatch.setattr(packed, "has_avx512", lambda: avx512)
    monkeypatch.setattr(packed, "native_products", lambda kind=None: native)
    plain, quantized = tiny_model(), tiny_model()
    packed.use_quantized_weights(quantized, "int8")
    assert generation.compiled_by_default(plain) is not amx
    assert generation.compiled_by_default(quantized) is quantized_compiles


@pytest.mark.skipif(not {"avx2", "fma"} <= packed.cpu_flags(), reason="model/native.c is x86 code for AVX2 and FMA")
def test_where_the_one_call_step_serves_a_model_its_generations_compile_nothing(monkeypatch):
    """The one-call step (model/native_step.py) outruns compiled steps and compiles nothing: a long generation does
    not compile by default, `compile_steps` has nothing to do, and a generation that asks for compiled steps is
    served by the one-call step all the same (no graph made)."""
    import torch

    from clozelm import generation
    from clozelm.model import native_step
    monkeypatch.setenv("CLOZELM_NATIVE_KERNELS", "1")
    monkeypatch.setattr(packed, "has_amx", lambda: False)
    model = tiny_model()
    assert native_step.serves(model)
    assert not generation.compiled_by_default(model)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    generation.compile_steps(model)
    asked = list(generate_ids(model, [1, 2, 3], 5, lookahead=0, compile=True))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    monkeypatch.setenv("CLOZELM_NATIVE_STEP", "0")
    assert generation.compiled_by_default(model) and asked == list(generate_ids(model, [1, 2, 3], 5, lookahead=0))
