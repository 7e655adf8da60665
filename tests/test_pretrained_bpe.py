"""PretrainedBPE: a model's own byte-level BPE (split regex, special tokens, BOS rule) from GGUF metadata or a
Hugging Face tokenizer.json, held to Hugging Face `tokenizers` configured exactly as the model's tokenizer.json.

SmolLM2's tokenizer.json (Digits(individual_digits) + ByteLevel) is rebuilt from the vocabulary in the GGUF
file, independently of clozelm. transformers' own GGUF tokenizer is compared too, on text where it is right:
for pre-tokenizer "smollm" it runs GPT-2's regex without the digit split, so a run of whitespace before a
digit ("\\n\\n2") comes out as two tokens where the model's tokenizer (and llama.cpp) make one.
"""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clozelm.errors import ClozelmError
from clozelm.tokenizers import PretrainedBPE, load_tokenizer
from clozelm.tokenizers.pretrained_bpe import LLAMA3_SPLIT, QWEN2_SPLIT
from clozelm.weights import gguf as G
from corpora import documents

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<file_sep>"]
PIECES = ["Hello", " world", "  ", "\n\n", "\t", " 2024", "3.14", "x²", "١٢٣", "１２３", "naïve", "e\u0301", "中文",
          "😀", "👨‍👩‍👧", "'s", "'S", "’ll", "\r\n", "\x00", "\x04", "\x7f", "\u00a0", "\u2028", "\ufeff", "  7"]
any_chars = st.characters(exclude_categories=("Cs",))
texts = st.lists(st.one_of(st.text(any_chars, max_size=10), st.sampled_from(PIECES)), max_size=25).map("".join)


@pytest.fixture(scope="module")
def meta():
    return G.read_metadata(G.open_gguf(G.find_smollm2()))


@pytest.fixture(scope="module")
def smollm2(meta):
    return PretrainedBPE.from_gguf_metadata(meta, source="smollm2")


@pytest.fixture(scope="module")
def oracle(meta):
    """SmolLM2's tokenizer.json, rebuilt with HF tokenizers from the file's vocabulary."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                     merges=[tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]])
    tk = Tokenizer(bpe)
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == 3])
    return tk


def test_roles_bos_rule_and_framing(smollm2):
    assert smollm2.vocab_size == 49152 and smollm2.kind == "bpe"
    assert (smollm2.bos_id, smollm2.eos_id, smollm2.pad_id) == (1, 2, 2)  # <|im_start|>, <|im_end|>, as the file says
    assert smollm2.add_bos is False
    # SmolLM2 adds no BOS: a text opens after the document separator it was pretrained with
    assert smollm2.frame_tokens(causal=True) == ([0], [])
    assert smollm2.special_tokens["<|im_start|>"] == 1 and len(smollm2.special_tokens) == 17
    assert smollm2.lossless  # decoding is byte-exact (bytes without a token are dropped, as SmolLM2's tokenizer does)
    assert smollm2.decode(smollm2.encode("tab\there \x04")) == "tab\there "


def test_matches_the_models_tokenizer_on_1mb_of_real_text(smollm2, oracle):
    docs = documents(1_000_000, block_chars=5_000)
    assert sum(len(d.encode()) for d in docs) >= 1_000_000
    ours = smollm2.encode_batch(docs)
    assert ours == [e.ids for e in oracle.encode_batch(docs)]
    assert [smollm2.decode(ids) for ids in ours] == docs


def test_matches_transformers_gguf_tokenizer_where_that_one_is_right(smollm2):
    import transformers

    path = G.find_smollm2()
    hf = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    docs = [re.sub(r"\s+(?=\d)", " ", d) for d in documents(300_000, block_chars=3_000)]
    assert hf(docs)["input_ids"] == smollm2.encode_batch(docs)
    text = "first<|endoftext|> second<|im_start|>user"
    assert hf(text)["input_ids"] == smollm2.encode(text, specials=True)
    assert hf("a  1")["input_ids"] != smollm2.encode("a  1")  # the known divergence, see the module docstring


@settings(max_examples=400, deadline=None)
@given(texts)
def test_fuzz_matches_the_models_tokenizer(smollm2, oracle, text):
    ids = smollm2.encode(text)
    assert ids == oracle.encode(text, add_special_tokens=False).ids
    assert smollm2.decode(ids) == oracle.decode(ids, skip_special_tokens=False)
    same, spans, pieces = smollm2.encode_with_spans(text, specials=False)
    assert same == ids and len(spans) == len(pieces) == len(ids)
    assert all(0 <= a <= b <= len(text) for a, b in spans)
    assert [a for a, _ in spans] == sorted(a for a, _ in spans)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(texts, st.sampled_from(SPECIALS)), max_size=6).map("".join))
def test_fuzz_special_tokens(smollm2, oracle, text):
    assert smollm2.encode(text, specials=True) == oracle.encode(text).ids
    plain = smollm2.encode(text)  # specials=False: their text is ordinary text
    assert not set(plain) & set(smollm2.special_tokens.values())


def test_digits_one_at_a_time_and_whitespace_before_digits(smollm2, oracle):
    for text in ["2024", "a  1", "\n\n2 Then", "x 123 45", "v1.2.3", "  9\t 9"]:
        assert smollm2.encode(text) == oracle.encode(text).ids, text


def test_save_pretrained_opens_in_transformers_and_clozelm(smollm2, oracle, tmp_path):
    import transformers

    smollm2.save_pretrained(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    assert isinstance(again, PretrainedBPE) and again.frame_tokens(causal=True) == ([0], [])
    docs = documents(200_000, block_chars=2_000) + ["a  1 \n\n2", "x\x04y <|im_end|>"]
    assert hf(docs)["input_ids"] == smollm2.encode_batch(docs, specials=True) == again.encode_batch(docs, specials=True)


# ---------------------------------------------------------------- other models' tokenizer.json layouts

def _train(tmp_path, split: str, bos: bool, nfc: bool):
    """A byte-level BPE trained by HF tokenizers with a Llama 3 / Qwen2 style pre-tokenizer, saved as a model
    directory's tokenizer.json (+ tokenizer_config.json)."""
    import json

    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    if nfc:
        tk.normalizer = normalizers.NFC()
    tk.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|endoftext|>"]
    tk.train_from_iterator(documents(400_000, block_chars=2_000), trainers.BpeTrainer(
        vocab_size=1500, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    if bos:
        tk.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)])
    tk.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|endoftext|>", "tokenizer_class": "PreTrainedTokenizerFast"}))
    return tk


@pytest.mark.parametrize("split,bos,nfc", [(LLAMA3_SPLIT, True, False), (QWEN2_SPLIT, False, True)], ids=["llama3", "qwen2"])
def test_tokenizer_json_layouts(tmp_path, split, bos, nfc):
    oracle = _train(tmp_path, split, bos, nfc)
    ours = load_tokenizer(tmp_path)
    assert isinstance(ours, PretrainedBPE) and ours.add_bos is bos and ours.nfc is nfc
    assert ours.frame_tokens(causal=True) == ([0] if bos else [1], [])
    docs = documents(300_000, block_chars=2_000)[-40:] + ["Cafe\u0301 ﬁ 1234567 it's IT'S\r\n\r\n  x"]
    assert ours.encode_batch(docs) == [e.ids for e in oracle.encode_batch(docs, add_special_tokens=False)]
    with pytest.warns(DeprecationWarning):  # the old keyword takes the same path: NFC first where it applies
        assert ours.encode_batch(docs[-1:], allowed_special="all") == ours.encode_batch(docs[-1:], specials=True)
    # Spans are offsets into the text given, also where the tokenizer reads its NFC form ("e" + U+0301 is "é"):
    # the tokens' spans tile it, so every word after a decomposed accent keeps its own characters.
    for text in ["Cafe\u0301 au lait, garc\u0327on, la\u0300 et ici.", "Zu\u0308rich \u212b x\u0323\u0302y"]:
        ids, spans, _ = ours.encode_with_spans(text, specials=False)
        assert ids == ours.encode(text) and "".join(text[a:b] for a, b in spans) == text

    @settings(max_examples=200, deadline=None)
    @given(texts)
    def fuzz(text):
        assert ours.encode(text) == oracle.encode(text, add_special_tokens=False).ids

    fuzz()


def test_unsupported_tokenizer_json_is_one_line(tmp_path):
    import json

    base = {"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "ByteLevel"}}
    for change, match in [({"model": {"type": "BPE", "vocab": {}, "merges": [], "byte_fallback": True}}, "byte fallback"),
                          ({"pre_tokenizer": {"type": "Metaspace", "replacement": "▁"}}, "pre-tokenizer .* is not supported"),
                          ({"normalizer": {"type": "Lowercase"}}, "normalizer .* is not supported")]:
        (tmp_path / "tokenizer.json").write_text(json.dumps({**base, **change}))
        with pytest.raises(ClozelmError, match=match) as info:
            PretrainedBPE.from_dir(tmp_path)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("pre,given,expected", [("llama-bpe", None, True), ("llama3", None, True),
                                                ("smollm", None, False), ("qwen2", None, False),
                                                ("llama-bpe", False, False), ("smollm", True, True)])
def test_the_bos_rule_of_a_gguf_file_follows_llama_cpp(pre, given, expected):
    """llama.cpp opens a text with BOS after Llama 3's pre-tokenizers unless tokenizer.ggml.add_bos_token says
    otherwise; Llama 3 GGUF files often leave the key out."""
    from gguf_files import tokenizer_metadata
    meta = {f"tokenizer.ggml.{key}": value for key, value in tokenizer_metadata(300, pre=pre).items()
            if key != "add_bos_token"}
    if given is not None:
        meta["tokenizer.ggml.add_bos_token"] = given
    assert PretrainedBPE.from_gguf_metadata(meta, source="test").add_bos is expected
