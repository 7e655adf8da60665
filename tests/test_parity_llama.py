"""The Llama family against transformers' LlamaForCausalLM / Qwen2ForCausalLM / MistralForCausalLM:
random-initialised HF models of several shapes (grouped-query attention, untied heads, q/k/v biases, rope
scaling), saved in HF format and loaded back through clozelm."""

import json

import pytest
import torch
import transformers

import clozelm
from clozelm.errors import ClozelmError
from clozelm.generation import generate_ids
from clozelm.weights import hf as hf_weights

BASE = dict(vocab_size=1000, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=128)
SHAPES = {
    # (transformers config class, its arguments)
    "llama-gqa-tied": ("LlamaConfig", dict(BASE, num_key_value_heads=2, tie_word_embeddings=True)),
    "llama-mha-untied": ("LlamaConfig", dict(BASE, num_key_value_heads=4, tie_word_embeddings=False,
                                             rope_theta=500000.0, rms_norm_eps=1e-5)),
    "llama3-scaled-mqa": ("LlamaConfig", dict(BASE, num_hidden_layers=3, num_key_value_heads=1, rope_theta=500000.0,
                                              rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                                high_freq_factor=4.0, original_max_position_embeddings=16))),
    "llama-linear-scaled": ("LlamaConfig", dict(BASE, num_key_value_heads=2, rope_scaling=dict(rope_type="linear", factor=2.0))),
    "qwen2-biases": ("Qwen2Config", dict(BASE, hidden_size=96, num_attention_heads=6, num_key_value_heads=2,
                                         tie_word_embeddings=False, rope_theta=1000000.0)),
    "mistral": ("MistralConfig", dict(BASE, hidden_size=128, num_attention_heads=8, num_key_value_heads=2,
                                      sliding_window=4096, tie_word_embeddings=False)),
    "smollm2-layout": ("LlamaConfig", dict(BASE, hidden_size=576, intermediate_size=1536, num_attention_heads=9,
                                           num_key_value_heads=3, tie_word_embeddings=True, rope_theta=100000.0,
                                           rms_norm_eps=1e-5)),
}
MODEL_CLASS = {"LlamaConfig": "LlamaForCausalLM", "Qwen2Config": "Qwen2ForCausalLM", "MistralConfig": "MistralForCausalLM"}


def make_hf(shape, path):
    config_class, kwargs = SHAPES[shape]
    cfg = getattr(transformers, config_class)(**kwargs)
    torch.manual_seed(hash(shape) % 1000)
    hf = getattr(transformers, MODEL_CLASS[config_class])(cfg).eval()
    # HF initialises norms to 1 and biases to 0: perturb them so a swapped tensor cannot hide behind them.
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(path)
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
    return hf, hf_weights.load_hf_dir(path), SHAPES[request.param][1], path


def test_config_switches(pair):
    hf, ours, shape, _ = pair
    cfg = ours.config
    assert (cfg.norm, cfg.positions, cfg.mlp, cfg.bias, cfg.family) == ("rmsnorm", "rope", "gated", False, "llama")
    assert cfg.kv_heads == shape.get("num_key_value_heads", shape["num_attention_heads"])
    assert cfg.head == ("tied" if hf.config.tie_word_embeddings else "untied")
    assert cfg.attn_qkv_bias == isinstance(hf, transformers.Qwen2ForCausalLM)
    assert ours.num_parameters() == sum(p.numel() for p in hf.parameters())


@pytest.mark.parametrize("left_pad", [False, True])
def test_logits_match_with_padding(pair, left_pad):
    hf, ours, shape, _ = pair
    ids, mask = ragged_batch(shape["vocab_size"], [17, 9, 4], left_pad)
    positions = (mask.cumsum(1) - 1).clamp(min=0)  # what clozelm does for padded rows
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask, position_ids=positions).logits
        got = ours(ids, attention_mask=mask).logits
    real = mask.bool()
    assert (got[real] - ref[real]).abs().max() <= 1e-4


def test_unpadded_logits_and_hidden_match(pair):
    hf, ours, shape, _ = pair
    ids = torch.randint(0, shape["vocab_size"], (2, 31))
    with torch.no_grad():
        ref = hf(ids, output_hidden_states=True)
        got = ours(ids)
    assert (got.logits - ref.logits).abs().max() <= 1e-4
    assert (got.hidden - ref.hidden_states[-1]).abs().max() <= 1e-4


def test_attention_probabilities_match_eager(pair):
    hf, ours, shape, _ = pair
    hf.set_attn_implementation("eager")
    try:
        ids, mask = ragged_batch(shape["vocab_size"], [12, 7], left_pad=False)
        with torch.no_grad():
            ref = hf(ids, attention_mask=mask, output_attentions=True).attentions
            got = ours(ids, attention_mask=mask, attentions=True)
            fast = ours(ids, attention_mask=mask)
    finally:
        hf.set_attn_implementation("sdpa")
    assert (got.logits - fast.logits).abs().max() <= 1e-4  # the explicit path and the SDPA path agree
    assert len(got.attentions) == len(ref) == shape["num_hidden_layers"]
    for layer_ref, layer_got in zip(ref, got.attentions):
        assert layer_got.shape == layer_ref.shape == (2, shape["num_attention_heads"], 12, 12)
        real_queries = mask.bool()[:, None, :, None].expand_as(layer_got)
        assert (layer_got - layer_ref)[real_queries].abs().max() <= 1e-5


def test_greedy_20_tokens_identical(pair):
    hf, ours, shape, _ = pair
    prompt = torch.randint(0, shape["vocab_size"], (1, 8))
    with torch.no_grad():
        ref = hf.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0, eos_token_id=None)[0, 8:]
    got = list(generate_ids(ours, prompt[0].tolist(), max_new_tokens=20))
    assert got == ref.tolist()


def test_kv_cache_equals_full_recomputation(pair):
    _, ours, shape, _ = pair
    ids = torch.randint(0, shape["vocab_size"], (2, 24))
    with torch.no_grad():
        full = ours(ids).logits
        cache = ours.new_cache(2, 24)
        assert cache.keys[0].shape[1] == ours.config.kv_heads  # the cache holds the shared key heads only
        chunks = [ours(ids[:, :10], cache=cache).logits]  # a prefix at once, then token by token
        chunks += [ours(ids[:, t:t + 1], cache=cache).logits for t in range(10, 20)]
        chunks.append(ours(ids[:, 20:], cache=cache).logits)  # and a multi-token step on a warm cache
    assert (torch.cat(chunks, 1) - full).abs().max() <= 1e-4


def test_kv_cache_with_left_padding_matches_unpadded_rows(pair):
    _, ours, shape, _ = pair
    ids, mask = ragged_batch(shape["vocab_size"], [10, 6], left_pad=True)
    nxt = torch.randint(0, shape["vocab_size"], (2, 3))
    with torch.no_grad():
        cache = ours.new_cache(2, 13)
        ours(ids, attention_mask=mask, cache=cache)
        steps = torch.cat([ours(nxt[:, t:t + 1], cache=cache).logits for t in range(3)], 1)
        alone = ours(torch.cat([ids[1, -6:], nxt[1]])[None]).logits[0, -3:]
    assert (steps[1] - alone).abs().max() <= 1e-4


def test_save_pretrained_opens_in_transformers(pair, tmp_path):
    hf, ours, shape, _ = pair
    hf_weights.save_pretrained(ours, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    auto = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(auto).__name__ == saved["architectures"][0]
    ids = torch.randint(0, shape["vocab_size"], (2, 16))
    with torch.no_grad():
        assert (auto(ids).logits - hf(ids).logits).abs().max() <= 1e-4
    again = hf_weights.load_hf_dir(tmp_path / "out")
    assert again.config == ours.config
    for (k, a), (_, b) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


def test_clozelm_load_opens_the_directory(pair):
    hf, _, shape, path = pair
    model = clozelm.load(path, tokenizer=False)
    ids = torch.randint(0, shape["vocab_size"], (1, 9))
    with torch.no_grad():
        assert (model(ids).logits - hf(ids).logits).abs().max() <= 1e-4


def test_bf16_stays_close(pair):
    hf, ours, shape, _ = pair
    ids = torch.randint(0, shape["vocab_size"], (1, 12))
    low = hf_weights.load_hf_dir(pair[3]).to(torch.bfloat16)
    with torch.no_grad():
        ref = ours(ids).logits
        got = low(ids).logits.float()
    assert (got - ref).abs().max() <= 0.1 * ref.abs().max()


def test_missing_or_unsupported_llama_files_are_one_line_errors(tmp_path):
    path = tmp_path / "m"
    make_hf("llama-gqa-tied", path)
    from safetensors.torch import load_file, save_file
    sd = load_file(path / "model.safetensors")
    save_file({k: v for k, v in sd.items() if "layers.1.mlp.gate_proj" not in k}, path / "model.safetensors")
    with pytest.raises(ClozelmError, match="missing 1 tensors: h.1.mlp.c_gate.weight"):
        hf_weights.load_hf_dir(path)
    del sd["model.layers.0.self_attn.k_proj.weight"]
    save_file(sd, path / "model.safetensors")
    with pytest.raises(ClozelmError, match="lacks attention weight tensors for: k_proj"):
        hf_weights.load_hf_dir(path)
    config = json.loads((path / "config.json").read_text())
    for bad, match in [({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, "'yarn' is not supported"),
                       ({"head_dim": 32}, "unsupported llama config options: {'head_dim': 32}"),
                       ({"num_key_value_heads": 3}, "not a multiple of n_kv_head=3"),
                       ({"rope_parameters": {"rope_type": "linear", "factor": 0, "rope_theta": 1e4}},
                        "rope_scaling factor must be > 0, got 0"),
                       ({"rope_parameters": {"rope_type": "linear", "factor": float("nan"), "rope_theta": 1e4}},
                        "needs finite numbers for factor"),
                       ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 0, "rope_theta": 1e4,
                                             "high_freq_factor": 4.0, "original_max_position_embeddings": 16}},
                        "needs 0 < low_freq_factor < high_freq_factor, got 0 and 4.0"),
                       ({"rope_parameters": {"factor": 4.0, "rope_theta": 1e4}}, "rope_scaling {'factor': 4.0} names no rope_type"),
                       ({"rope_parameters": None, "rope_scaling": {"rope_type": "linear", "factor": -2.0}},
                        "rope_scaling factor must be > 0, got -2.0"),
                       ({"rope_parameters": None, "rope_scaling": {"factor": 4.0}}, "rope_scaling {'factor': 4.0} names no rope_type"),
                       ({"intermediate_size": 0}, "intermediate_size"),  # named as config.json names it
                       ({"bos_token_id": 1.5}, "bos_token_id must be a whole number, not 1.5")]:
        (path / "config.json").write_text(json.dumps({**config, **bad}))
        with pytest.raises(ClozelmError, match=match.replace("{", r"\{").replace("}", r"\}").replace("(", r"\(")):
            hf_weights.load_hf_dir(path)


def test_untied_file_without_lm_head_refuses_to_run_on_random_weights(tmp_path):
    path = tmp_path / "m"
    make_hf("llama-mha-untied", path)
    from safetensors.torch import load_file, save_file
    sd = load_file(path / "model.safetensors")
    save_file({k: v for k, v in sd.items() if k != "lm_head.weight"}, path / "model.safetensors")
    with pytest.raises(ClozelmError, match="missing 1 tensors: lm_head.weight"):
        hf_weights.load_hf_dir(path)


def test_loading_in_bf16_converts_while_building_and_copies_nothing_already_bf16(pair, tmp_path):
    """load(dtype="bf16") gives exactly the fp32 model rounded to bf16; a bf16 file's tensors become the network's
    parameters as they are (no fp32 model in between: its memory would be twice the file's)."""
    _, ours, _, path = pair
    low = clozelm.load(path, tokenizer=False, dtype="bf16").network
    expected = ours.to(torch.bfloat16).state_dict()
    assert all(t.dtype == torch.bfloat16 and torch.equal(t, expected[k]) for k, t in low.state_dict().items())
    sd = {k: v.clone() for k, v in expected.items()}
    pointers = {k: v.data_ptr() for k, v in sd.items()}
    built = hf_weights.build_model(ours.config, sd, dtype=torch.bfloat16)
    assert {k: v.data_ptr() for k, v in built.state_dict().items()} == pointers


def test_a_tied_llama_saved_once_under_the_heads_name_loads(tmp_path):
    from safetensors.torch import save_file
    hf = make_hf("llama-gqa-tied", tmp_path)
    state = {k: v.contiguous() for k, v in hf.state_dict().items() if k != "model.embed_tokens.weight"}
    for f in tmp_path.glob("*.safetensors"):
        f.unlink()
    save_file(state, tmp_path / "model.safetensors")
    ids = torch.randint(0, BASE["vocab_size"], (2, 12))
    with torch.no_grad():
        assert (clozelm.load(tmp_path)(ids).logits - hf(ids).logits).abs().max() <= 1e-4


def test_query_key_and_value_that_do_not_fit_together_are_one_line(tmp_path):
    from safetensors.torch import load_file, save_file
    make_hf("llama-gqa-tied", tmp_path)
    path = next(tmp_path.glob("*.safetensors"))
    state = load_file(path)
    state["model.layers.1.self_attn.k_proj.weight"] = state["model.layers.1.self_attn.k_proj.weight"][:, :16].clone()
    save_file(state, path)
    with pytest.raises(ClozelmError, match=r"layer 1: the attention's query, key and value tensors do not fit together "
                                           r"\(q \[64, 64\], k \[32, 16\], v \[32, 64\]\)"):
        clozelm.load(tmp_path)


def test_a_refused_config_is_said_before_the_weights_are_read(tmp_path):
    """A setting clozelm refuses costs no minutes of reading gigabytes first: the weights here are not even valid."""
    path = tmp_path / "m"
    make_hf("llama-gqa-tied", path)
    config = json.loads((path / "config.json").read_text())
    yarn = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}
    (path / "config.json").write_text(json.dumps({**config, "rope_parameters": yarn}))
    (path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ClozelmError, match="'yarn' is not supported"):
        hf_weights.load_hf_dir(path)


def test_a_tied_config_with_a_head_of_its_own_is_refused(tmp_path):
    """transformers would tie the head to the embeddings and drop the file's own trained head without a word."""
    from safetensors.torch import load_file, save_file
    path = tmp_path / "m"
    make_hf("llama-gqa-tied", path)
    state = load_file(path / "model.safetensors")
    state["lm_head.weight"] = state["model.embed_tokens.weight"] + 0.01
    save_file(state, path / "model.safetensors")
    with pytest.raises(ClozelmError, match=r"lm_head.weight differs from the token embeddings, but config.json ties them "
                                           r"\(tie_word_embeddings is true\)"):
        hf_weights.load_hf_dir(path)
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()  # the same matrix saved twice: fine
    save_file(state, path / "model.safetensors")
    hf_weights.load_hf_dir(path)


def test_each_tensor_read_is_held_once_while_the_model_is_built(tmp_path, monkeypatch):
    """A bf16 checkpoint loaded as fp32: each tensor read must be freed once converted, so nothing but the dict
    build_model converts may hold it (the file's own dict kept every one alive, and q/k/v beside their fused copy)."""
    import gc
    import weakref
    path = tmp_path / "m"
    make_hf("llama-gqa-tied", path)
    read = []
    real_read, real_build = hf_weights.tensor_io.read_weights, hf_weights.build_model

    def reading(where):
        sd = real_read(where)
        read.extend(weakref.ref(t) for t in sd.values())
        return sd

    def building(cfg, sd, *args, **kwargs):
        gc.collect()
        alive = [r() for r in read if r() is not None]
        assert len(alive) < len(read)  # q, k and v, once fused, are gone
        assert all(len([h for h in gc.get_referrers(t) if isinstance(h, dict)]) == 1 for t in alive)
        del alive
        return real_build(cfg, sd, *args, **kwargs)

    monkeypatch.setattr(hf_weights.tensor_io, "read_weights", reading)
    monkeypatch.setattr(hf_weights, "build_model", building)
    hf_weights.load_hf_dir(path)


def test_pretraining_tp_is_accepted(tmp_path):
    """pretraining_tp > 1 asked transformers 4 to slice each product into as many pieces and add them up (the same
    numbers up to the order of the sums); transformers 5 no longer reads it. Either way the network is the same."""
    path = tmp_path / "m"
    make_hf("llama-mha-untied", path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "pretraining_tp": 2}))
    hf = transformers.LlamaForCausalLM.from_pretrained(path).eval()
    ids = torch.randint(0, BASE["vocab_size"], (2, 12))
    with torch.no_grad():
        assert (clozelm.load(path)(ids).logits - hf(ids).logits).abs().max() <= 1e-4
