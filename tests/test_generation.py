"""Generation: decoding rules, streaming that never splits a character, stop strings."""

import torch

from clozelm.generation import Sampling, beam_search, generate, generate_ids, pick_token, stream_text
from clozelm.model import ModelConfig, Transformer
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
