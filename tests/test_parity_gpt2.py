"""GPT-2 against transformers' GPT2LMHeadModel: random-initialised HF models of several shapes,
saved in HF format and loaded back through clozelm."""

import pytest
import torch
import transformers

import clozelm
from clozelm.generation import generate_ids

SHAPES = {
    "tiny": dict(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, n_positions=128),
    "wide-mlp": dict(n_layer=3, n_embd=96, n_head=6, n_inner=200, vocab_size=777, n_positions=64),
    "gpt2-124M": dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024),
}


def make_hf(shape, tmp_path, **extra):
    cfg = transformers.GPT2Config(**SHAPES[shape], **extra)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    # HF initialises LayerNorm to (1, 0) and biases to 0: perturb them so a swapped or
    # untransposed tensor cannot hide behind a trivial value.
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path)
    return hf


def ragged_batch(vocab, lengths, left_pad=False):
    T = max(lengths)
    ids = torch.zeros(len(lengths), T, dtype=torch.long)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for row, n in enumerate(lengths):
        sl = slice(T - n, T) if left_pad else slice(0, n)
        ids[row, sl] = torch.randint(0, vocab, (n,))
        mask[row, sl] = 1
    return ids, mask


@pytest.fixture(scope="module", params=list(SHAPES))
def pair(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    hf = make_hf(request.param, path)
    return hf, clozelm.load(path), SHAPES[request.param]


@pytest.mark.parametrize("left_pad", [False, True])
def test_logits_match_with_padding(pair, left_pad):
    hf, ours, shape = pair
    ids, mask = ragged_batch(shape["vocab_size"], [17, 9, 4], left_pad)
    positions = (mask.cumsum(1) - 1).clamp(min=0)  # what clozelm does for padded rows
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask, position_ids=positions).logits
        got = ours(ids, attention_mask=mask).logits
    real = mask.bool()
    assert (got[real] - ref[real]).abs().max() <= 1e-4


def test_unpadded_logits_and_hidden_match(pair):
    hf, ours, shape = pair
    ids = torch.randint(0, shape["vocab_size"], (2, 31))
    with torch.no_grad():
        ref = hf(ids, output_hidden_states=True)
        got = ours(ids)
    assert (got.logits - ref.logits).abs().max() <= 1e-4
    assert (got.hidden - ref.hidden_states[-1]).abs().max() <= 1e-4


def test_attention_probabilities_match_eager(pair):
    hf, ours, shape = pair
    hf.set_attn_implementation("eager")
    ids, mask = ragged_batch(shape["vocab_size"], [12, 7], left_pad=False)
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask, output_attentions=True).attentions
        got = ours(ids, attention_mask=mask, attentions=True).attentions
    assert len(got) == len(ref) == shape["n_layer"]
    for layer_ref, layer_got in zip(ref, got):
        assert layer_got.shape == layer_ref.shape
        real_queries = mask.bool()[:, None, :, None].expand_as(layer_got)
        assert (layer_got - layer_ref)[real_queries].abs().max() <= 1e-5


def test_greedy_20_tokens_identical(pair):
    hf, ours, shape = pair
    prompt = torch.randint(0, shape["vocab_size"], (1, 8))
    with torch.no_grad():
        ref = hf.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0, eos_token_id=None)[0, 8:]
    got = list(generate_ids(ours, prompt[0].tolist(), max_new_tokens=20))
    assert got == ref.tolist()


def test_kv_cache_equals_full_recomputation(pair):
    _, ours, shape = pair
    ids = torch.randint(0, shape["vocab_size"], (2, 24))
    with torch.no_grad():
        full = ours(ids).logits
        cache = ours.new_cache(2, 24)
        chunks = [ours(ids[:, :10], cache=cache).logits]  # a prefix at once, then token by token
        chunks += [ours(ids[:, t:t + 1], cache=cache).logits for t in range(10, 20)]
        chunks.append(ours(ids[:, 20:], cache=cache).logits)  # and a multi-token step on a warm cache
    assert (torch.cat(chunks, 1) - full).abs().max() <= 1e-4


def test_kv_cache_with_left_padding_matches_unpadded_rows(pair):
    _, ours, shape = pair
    ids, mask = ragged_batch(shape["vocab_size"], [10, 6], left_pad=True)
    nxt = torch.randint(0, shape["vocab_size"], (2, 3))
    with torch.no_grad():
        cache = ours.new_cache(2, 13)
        ours(ids, attention_mask=mask, cache=cache)
        steps = torch.cat([ours(nxt[:, t:t + 1], cache=cache).logits for t in range(3)], 1)
        alone = ours(torch.cat([ids[1, -6:], nxt[1]])[None]).logits[0, -3:]
    assert (steps[1] - alone).abs().max() <= 1e-4


def test_save_pretrained_opens_in_transformers(pair, tmp_path):
    hf, ours, shape = pair
    ours.save_pretrained(tmp_path / "out")
    reopened = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(0, shape["vocab_size"], (2, 16))
    with torch.no_grad():
        assert (reopened(ids).logits - hf(ids).logits).abs().max() <= 1e-4
    again = clozelm.load(tmp_path / "out")
    for (k, a), (_, b) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


def test_saving_holds_no_second_copy_of_the_weights(pair):
    from clozelm.weights.hf import to_hf

    _, ours, _ = pair
    own = {p.untyped_storage().data_ptr() for p in ours.network.state_dict().values()}
    hf_tensors = to_hf(ours.network)
    assert hf_tensors and all(t.untyped_storage().data_ptr() in own for t in hf_tensors.values())


@pytest.mark.parametrize("prefix", ["", "module._orig_mod.", "_orig_mod.module."])
def test_a_tied_pair_saved_once_under_the_heads_name_and_wrapped_names_load(tmp_path, prefix):
    """safetensors' save_model keeps one name of tensors that share memory, the one that sorts first: here
    lm_head.weight, the embeddings gone from the file (transformers loads it). DDP around torch.compile (or the
    other way round) prefixes every name."""
    from safetensors.torch import save_file
    hf = make_hf("tiny", tmp_path)
    state = {prefix + k: v.contiguous() for k, v in hf.state_dict().items() if k != "transformer.wte.weight"}
    assert prefix + "lm_head.weight" in state
    (tmp_path / "model.safetensors").unlink()
    save_file(state, tmp_path / "model.safetensors")
    ids = torch.randint(0, SHAPES["tiny"]["vocab_size"], (2, 12))
    with torch.no_grad():
        assert (clozelm.load(tmp_path)(ids).logits - hf(ids).logits).abs().max() <= 1e-4


def test_an_untied_gpt2_loads_and_saves_as_transformers_reads_it(tmp_path):
    """tie_word_embeddings false (a GPT-2 GGUF whose output matrix is quantized apart from its embeddings converts
    to this): the head is its own matrix, read from lm_head.weight and written back under that name, so transformers
    opens the saved directory; a tied config whose file holds a different head is refused."""
    hf = make_hf("tiny", tmp_path / "in", tie_word_embeddings=False)
    assert not torch.equal(hf.lm_head.weight, hf.transformer.wte.weight)
    ours = clozelm.load(tmp_path / "in")
    assert ours.network.config.head == "untied"
    ids = torch.randint(0, SHAPES["tiny"]["vocab_size"], (2, 16))
    with torch.no_grad():
        assert (ours(ids).logits - hf(ids).logits).abs().max() <= 1e-4
    ours.save_pretrained(tmp_path / "out")
    reopened = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    assert reopened.config.model_type == "gpt2" and not reopened.config.tie_word_embeddings
    with torch.no_grad():
        assert (reopened(ids).logits - hf(ids).logits).abs().max() <= 1e-4
    import json
    config = json.loads((tmp_path / "in" / "config.json").read_text())
    config["tie_word_embeddings"] = True
    (tmp_path / "in" / "config.json").write_text(json.dumps(config))
    with pytest.raises(clozelm.ClozelmError, match="lm_head.weight differs from the token embeddings"):
        clozelm.load(tmp_path / "in")
