"""Byte-level BPE as a pretrained model's own files define it: SmolLM, Qwen2, Llama 3, GPT-2 read from GGUF
metadata (`tokenizer.ggml.*`) or from a Hugging Face `tokenizer.json`.

GPT-2's machinery (`ByteBPE`, tiktoken as the engine) with what differs between these models:

* the pre-tokenizer, which decides where merges may not cross: GGUF names it (`tokenizer.ggml.pre`: "smollm",
  "llama-bpe", "qwen2", ...), tokenizer.json spells it out; both become one split regex (SPLITS below);
* ids in the file's order (special tokens often come first) and special tokens from the token types
  (CONTROL, USER_DEFINED) or `added_tokens`;
* the BOS rule: whether the model's tokenizer puts BOS before a text (Llama 3 does, SmolLM2 and Qwen2 do not);
* bytes the vocabulary lacks (SmolLM2 has no token for some control characters and for the lead bytes of planes
  4-11): Hugging Face's BPE drops them from each pre-tokenized piece before merging, and so do we (the bytes
  around a dropped one may then merge). Such text is rare and takes a slower path; other text runs in tiktoken.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import regex

from clozelm.errors import ClozelmError
from clozelm.files import atomic_write_text
from clozelm.tokenizers.base import UNSET, deprecated_keyword
from clozelm.tokenizers.bpe import (
    ENDOFTEXT,
    GPT2_SPLIT_PATTERN,
    ByteBPE,
    check_encodable,
    _read_hf_special_tokens,
    _read_json_object,
    bytes_to_symbols,
    merges_as_bytes,
    symbols_to_bytes,
)

# SmolLM/StarCoder: HF's pre-tokenizer is Digits(individual_digits) then GPT-2's ByteLevel regex, and llama.cpp
# runs the regexes "\p{N}" then GPT-2's. As one regex: digits one at a time, and a whitespace run before a
# digit kept whole (the digit split ends the segment there, so GPT-2's `\s+(?!\S)` takes all of it).
SMOLLM_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?=\p{N})|\s+(?!\S)|\s+"""
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# GGUF `tokenizer.ggml.pre` names (llama.cpp's) -> split regex.
SPLITS = {
    "gpt-2": GPT2_SPLIT_PATTERN, "gpt2": GPT2_SPLIT_PATTERN,
    "smollm": SMOLLM_SPLIT, "starcoder": SMOLLM_SPLIT, "refact": SMOLLM_SPLIT, "codeshell": SMOLLM_SPLIT,
    "llama-bpe": LLAMA3_SPLIT, "llama3": LLAMA3_SPLIT, "llama-v3": LLAMA3_SPLIT, "smaug-bpe": LLAMA3_SPLIT,
    "falcon3": LLAMA3_SPLIT, "dbrx": LLAMA3_SPLIT, "pixtral": LLAMA3_SPLIT,
    "qwen2": QWEN2_SPLIT, "deepseek-r1-qwen": QWEN2_SPLIT, "megrez": QWEN2_SPLIT,
}
# Pre-tokenizers after which llama.cpp opens every text with the BOS token unless the file says otherwise
# (tokenizer.ggml.add_bos_token): Llama 3's family, whose GGUF files often leave the key out.
ADDS_BOS = {"llama-bpe", "llama3", "llama-v3", "falcon3", "pixtral"}
# GGUF token types (llama.cpp's enum)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


class PretrainedBPE(ByteBPE):
    """A pretrained model's byte-level BPE (see the module docstring). Build it with `from_gguf_metadata`,
    `from_tokenizer_json` or `from_dir`."""

    def __init__(self, merges: Sequence[tuple[bytes, bytes]], special_tokens: Mapping[str, int],
                 token_ids: Mapping[bytes, int], *, split_pattern: str, pre_tokenizer: str = "",
                 roles: Mapping[str, str] | None = None, add_bos: bool = False, nfc: bool = False,
                 source: str = "<memory>"):
        """`token_ids`: bytes -> id of every ordinary token; single bytes the vocabulary lacks may be missing.
        `pre_tokenizer`: the name the split regex came from (for display and for saving back)."""
        self.split_pattern = split_pattern
        self.pre_tokenizer = pre_tokenizer
        self.add_bos = add_bos
        self.nfc = nfc  # a Unicode NFC normalizer runs before splitting (Qwen2's tokenizer.json)
        token_ids = dict(token_ids)
        real_size = 1 + max([*token_ids.values(), *special_tokens.values()])
        # The engine needs a rank for every byte: bytes without a token get placeholder ids past the vocabulary,
        # which `_ids_from_engine` drops (no merge can use them, so they always come out alone).
        missing = [bytes([b]) for b in range(256) if bytes([b]) not in token_ids]
        for k, token in enumerate(missing):
            token_ids[token] = real_size + k
        super().__init__(merges, special_tokens, token_ids, roles=roles, source=source)
        for token in missing:
            del self._bytes_of_id[self._id_of_bytes.pop(token)]
        self._vocab_size = real_size
        self._n_missing = len(missing)
        self._missing_bytes = b"".join(missing)
        # Decoding joins token bytes exactly and encoding keeps case and spelling, which is what `lossless`
        # promises its users (streaming generation, exact answers). The exceptions are the model's own: bytes
        # its vocabulary has no token for are dropped, and an NFC tokenizer composes accents.
        self.lossless = True

    # ------------------------------------------------------------------ building

    @classmethod
    def from_tables(cls, vocab: Mapping[str, int], merges: Sequence[tuple[str, str]], specials: Mapping[str, int],
                    **options) -> "PretrainedBPE":
        """From symbol-spelled tables (the spelling of GPT-2's vocab files, GGUF and tokenizer.json):
        `vocab` every token -> id, `specials` the ones matched as whole strings (control and added tokens)."""
        source = options.get("source", "<memory>")
        byte_merges, ordinary = merges_as_bytes(merges, source)
        token_ids, special_tokens = {}, {}
        for token, token_id in vocab.items():
            if token in ordinary:
                token_ids[symbols_to_bytes(token)] = int(token_id)
            elif token in specials:
                special_tokens[token] = int(token_id)
            # else: a token BPE never produces and the text never names (unused slots): its id stays a hole
        for token, token_id in specials.items():
            if token not in vocab and token not in ordinary:
                special_tokens[token] = int(token_id)
        missing = {bytes_to_symbols(bytes([b])) for b in range(256) if bytes([b]) not in token_ids}
        if missing and any(left in missing or right in missing for left, right in merges):
            raise ClozelmError(f"{source}: a merge uses a byte the vocabulary has no token for")
        return cls(byte_merges, special_tokens, token_ids, **options)

    @classmethod
    def from_gguf_metadata(cls, meta: Mapping, source: str = "") -> "PretrainedBPE":
        """From a GGUF file's `tokenizer.ggml.*` metadata (as `clozelm.weights.gguf.read_metadata` returns it)."""
        model = meta.get("tokenizer.ggml.model")
        if model is None:
            raise ClozelmError(f"{source}: the GGUF file has no tokenizer (tokenizer.ggml.model is missing)")
        if model != "gpt2":
            raise ClozelmError(f"{source}: tokenizer kind {model!r} is not supported "
                               "(clozelm reads byte-level BPE, tokenizer.ggml.model 'gpt2')")
        tokens, merges = meta.get("tokenizer.ggml.tokens"), meta.get("tokenizer.ggml.merges")
        if not tokens or merges is None:
            missing = [k for k, v in (("tokens", tokens), ("merges", merges)) if not v and v != []]
            raise ClozelmError(f"{source}: the GGUF tokenizer lacks tokenizer.ggml.{' and '.join(missing) or 'tokens'}")
        pre = meta.get("tokenizer.ggml.pre")
        if pre is None and meta.get("general.architecture") == "gpt2":
            pre = "gpt-2"
        if pre not in SPLITS:
            raise ClozelmError(f"{source}: pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not supported "
                               f"(supported: {', '.join(sorted(SPLITS))})")
        types = meta.get("tokenizer.ggml.token_type")
        types = np.asarray(types if types is not None else np.full(len(tokens), NORMAL))
        if len(types) != len(tokens):
            raise ClozelmError(f"{source}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")
        vocab = {}
        for i, token in enumerate(tokens):
            vocab.setdefault(token, i)
        specials = {tokens[i]: i for i in np.flatnonzero(np.isin(types, (CONTROL, USER_DEFINED, UNKNOWN))).tolist()}
        pairs = []
        for number, line in enumerate(merges, start=1):
            parts = line.split(" ")
            if len(parts) != 2:
                raise ClozelmError(f"{source}: tokenizer merge {number} is {line!r}, not two symbols")
            pairs.append((parts[0], parts[1]))
        roles = {}
        for role, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id"),
                          ("unk", "unknown_token_id")):
            token_id = meta.get(f"tokenizer.ggml.{key}")
            if token_id is not None and 0 <= int(token_id) < len(tokens) and tokens[int(token_id)] in specials:
                roles[role] = tokens[int(token_id)]
        return cls.from_tables(vocab, pairs, specials, split_pattern=SPLITS[pre], pre_tokenizer=pre, roles=roles,
                               add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", pre in ADDS_BOS)), source=source)

    @classmethod
    def from_tokenizer_json(cls, path, tokenizer_config: Mapping | None = None,
                            roles: Mapping[str, str] | None = None) -> "PretrainedBPE":
        """From a Hugging Face `tokenizer.json` (model BPE, byte-level), with `tokenizer_config.json`'s BOS rule."""
        path = Path(path)
        source = str(path)
        data = _read_json_object(path, "tokenizer file")
        model = data.get("model") or {}
        if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
            raise ClozelmError(f"{source}: only byte-level BPE tokenizer.json files are supported (model type {model.get('type')!r})")
        if model.get("byte_fallback") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
            raise ClozelmError(f"{source}: a BPE with byte fallback or word affixes is not byte-level BPE")
        split = _split_of(data.get("pre_tokenizer"), source)
        nfc = _nfc_of(data.get("normalizer"), source)
        merges = []
        for number, merge in enumerate(model.get("merges") or [], start=1):
            parts = merge.split(" ") if isinstance(merge, str) else list(merge)
            if len(parts) != 2:
                raise ClozelmError(f"{source}: merge {number} is {merge!r}, not two symbols")
            merges.append((parts[0], parts[1]))
        specials = {}
        for entry in data.get("added_tokens") or []:
            if isinstance(entry, dict) and isinstance(entry.get("content"), str) and isinstance(entry.get("id"), int):
                specials[entry["content"]] = entry["id"]
        config = dict(tokenizer_config or {})
        add_bos = config.get("add_bos_token")
        if add_bos is None:
            add_bos = _template_adds_bos(data.get("post_processor"))
        vocab = {**model["vocab"], **{t: i for t, i in specials.items() if t not in model["vocab"]}}
        return cls.from_tables(vocab, merges, specials, split_pattern=split, pre_tokenizer="tokenizer.json",
                               roles=roles, add_bos=bool(add_bos), nfc=nfc, source=source)

    @staticmethod
    def reads_dir(path) -> bool:
        """Whether `path` holds a byte-level BPE tokenizer.json that GPT-2's files alone would not describe: no
        vocab.json + merges.txt beside it, or a split regex, normalizer or BOS rule of its own. (A directory
        with a WordPiece tokenizer.json, or GPT-2's own, is left to the other readers.)"""
        directory = Path(path)
        file = directory / "tokenizer.json"
        if not file.is_file():
            return False
        data = _read_json_object(file, "tokenizer file")
        if (data.get("model") or {}).get("type") != "BPE":
            return False
        has_pair = any((directory / v).is_file() and (directory / m).is_file()
                       for v, m in (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt")))
        pre = data.get("pre_tokenizer")
        plain_gpt2 = (isinstance(pre, dict) and pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
                      and not pre.get("add_prefix_space", False))
        return not (has_pair and plain_gpt2 and data.get("normalizer") is None
                    and not _template_adds_bos(data.get("post_processor")))

    @classmethod
    def from_dir(cls, path) -> "PretrainedBPE":
        """A Hugging Face tokenizer directory with tokenizer.json (and tokenizer_config.json for the roles)."""
        directory = Path(path)
        _, roles = _read_hf_special_tokens(directory)
        config_file = directory / "tokenizer_config.json"
        config = _read_json_object(config_file, "tokenizer config") if config_file.is_file() else {}
        return cls.from_tokenizer_json(directory / "tokenizer.json", config, roles)

    # ------------------------------------------------------------------ encoding

    def _ids_from_engine(self, ranks: list[int]) -> list[int]:
        ids = super()._ids_from_engine(ranks)
        if self._n_missing:
            ids = [i for i in ids if i < self._vocab_size]
        return ids

    def _normalized(self, text: str) -> str:
        if self.nfc and not unicodedata.is_normalized("NFC", text):
            return unicodedata.normalize("NFC", text)
        return text

    def _has_missing_bytes(self, text: str) -> bool:
        if not self._n_missing:
            return False
        data = text.encode("utf-8", errors="surrogatepass")
        return len(data.translate(None, self._missing_bytes)) != len(data)

    def _encode(self, text: str, allowed: frozenset[str]) -> list[int]:
        text = self._normalized(text)
        if self._has_missing_bytes(text):
            return self._encode_dropping_missing_bytes(text, allowed)
        return super()._encode(text, allowed)

    def _encode_dropping_missing_bytes(self, text: str, allowed: frozenset[str]) -> list[int]:
        """As Hugging Face's BPE does: split, drop the bytes without a token from each piece, then merge."""
        check_encodable(text)
        ids: list[int] = []
        for segment, is_special in self._split_on_specials(text, allowed):
            if is_special:
                ids.append(self.special_tokens[segment])
                continue
            for piece in regex.findall(self.split_pattern, segment):
                data = piece.encode("utf-8").translate(None, self._missing_bytes)
                if data:
                    ids.extend(self._reference_bpe(data))  # the original pair-rank merge loop, as HF runs it
        return ids

    def encode_batch(self, texts: Iterable[str], allowed_special=UNSET, *,
                     specials: bool | Collection[str] = False) -> list[list[int]]:
        texts = list(texts)
        if self.nfc or any(self._has_missing_bytes(t) for t in texts):  # each text through _encode's rules
            if allowed_special is not UNSET:
                deprecated_keyword("encode_batch(texts, allowed_special=...)", "encode_batch(texts, specials=True)")
            allowed = self._allowed_set(allowed_special, specials)
            return [self._encode(text, allowed) for text in texts]
        return super().encode_batch(texts, allowed_special, specials=specials)

    def encode_with_spans(self, text: str, *, specials: bool | Collection[str] = True):
        """As ByteBPE's, the spans in `text`'s own offsets also where the tokenizer reads its NFC form; bytes
        without a token are skipped (they belong to no token)."""
        normalized = self._normalized(text)
        ids, spans, pieces = self._spans_of(normalized, specials)
        if normalized is not text:
            spans = _spans_in_original(text, normalized, spans)
        return ids, spans, pieces

    def _spans_of(self, text: str, specials):
        if not self._has_missing_bytes(text):
            return super().encode_with_spans(text, specials=specials)
        ids = self.encode(text, specials=specials)
        data = text.encode("utf-8")
        char_of_byte = []
        for index, char in enumerate(text):
            char_of_byte += [index] * len(char.encode("utf-8"))
        char_of_byte.append(len(text))
        spans, pieces, offset = [], [], 0
        for token_id in ids:
            token = self.token_bytes(token_id)
            while offset < len(data) and data[offset] != token[0] and data[offset] in self._missing_bytes:
                offset += 1
            positions = []
            while len(positions) < len(token):  # the token's bytes, with dropped bytes skipped between them
                if offset < len(data) and data[offset] == token[len(positions)]:
                    positions.append(offset)
                elif not (offset < len(data) and data[offset] in self._missing_bytes):
                    raise ClozelmError("internal error: token bytes do not spell the text")
                offset += 1
            # A character belongs to the token holding its first byte (as in ByteBPE.encode_with_spans); a token
            # of continuation bytes only gets an empty span at its character.
            starts = [p for p in positions if data[p] & 0xC0 != 0x80]
            if starts:
                start, end = char_of_byte[starts[0]], char_of_byte[starts[-1]] + 1
            else:
                start = end = char_of_byte[positions[0]]
            spans.append((start, end))
            pieces.append(text[start:end] or "".join(f"\\x{b:02x}" for b in token))
        return ids, spans, pieces

    def frame_tokens(self, *, causal: bool) -> tuple[list[int], list[int]]:
        """Causal: what the model's own tokenizer puts first — BOS when it adds one (Llama 3) — else the document
        separator `<|endoftext|>` these models were pretrained with between documents (SmolLM2, Qwen2)."""
        if causal:
            if self.add_bos and self.bos_id is not None:
                return [self.bos_id], []
            if ENDOFTEXT in self.special_tokens:
                return [self.special_tokens[ENDOFTEXT]], []
        return super().frame_tokens(causal=causal)

    def prompt_prefix(self) -> list[int]:
        return [self.bos_id] if self.add_bos and self.bos_id is not None else []

    def __repr__(self) -> str:
        return (f"PretrainedBPE(vocab_size={self.vocab_size}, merges={len(self._merges)}, pre_tokenizer="
                f"{self.pre_tokenizer!r}, add_bos={self.add_bos}, source={self.source!r})")

    # ------------------------------------------------------------------ saving

    def tokenizer_json(self) -> dict:
        """This tokenizer as Hugging Face `tokenizers` spells it (what transformers loads from tokenizer.json)."""
        # Special tokens belong in the model's vocab too: an added token missing from it gets a new id.
        entries = [(i, bytes_to_symbols(token)) for i, token in self._bytes_of_id.items()]
        vocab = {spelling: i for i, spelling in sorted(entries + [(i, s) for s, i in self.special_tokens.items()])}
        added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                  "normalized": False, "special": True} for s, i in sorted(self.special_tokens.items(), key=lambda x: x[1])]
        if self.split_pattern == SMOLLM_SPLIT:
            pre = {"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
        elif self.split_pattern == GPT2_SPLIT_PATTERN:
            pre = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
        else:
            pre = {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": self.split_pattern}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}
        post = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
        if self.add_bos and self.bos_id is not None:
            bos = self.piece(self.bos_id)
            post = {"type": "TemplateProcessing",
                    "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                    "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                             {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                    "special_tokens": {bos: {"id": bos, "ids": [self.bos_id], "tokens": [bos]}}}
        return {
            "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": {"type": "NFC"} if self.nfc else None, "pre_tokenizer": pre, "post_processor": post,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": vocab, "merges": [[bytes_to_symbols(l), bytes_to_symbols(r)] for l, r in self._merges]},
        }

    def save_pretrained(self, out_dir) -> None:
        """GPT-2's files (encoder.json, vocab.bpe, vocab.json, merges.txt) plus tokenizer.json, which carries the
        split regex and the BOS rule; tokenizer_config.json names the class that reads tokenizer.json."""
        super().save_pretrained(out_dir)
        directory = Path(out_dir)
        _, config = self._hf_configs()
        config.update(tokenizer_class="PreTrainedTokenizerFast", add_bos_token=self.add_bos, clozelm_pre_tokenizer=self.pre_tokenizer)
        for name, content in (("tokenizer.json", self.tokenizer_json()), ("tokenizer_config.json", config)):
            try:
                atomic_write_text(directory / name, json.dumps(content, indent=1 if name != "tokenizer.json" else None,
                                                               ensure_ascii=False))
            except OSError as error:
                raise ClozelmError(f"cannot write {directory / name}: {error.strerror}") from None


def _split_of(pre, source: str) -> str:
    """The split regex a tokenizer.json pre_tokenizer amounts to, or a one-line error."""
    def kind(p):
        return p.get("type") if isinstance(p, dict) else None

    if kind(pre) == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space", False):
        return GPT2_SPLIT_PATTERN
    if kind(pre) == "Sequence":
        parts = pre.get("pretokenizers") or []
        kinds = [kind(p) for p in parts]
        if (kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits")
                and parts[1].get("use_regex", True) and not parts[1].get("add_prefix_space", False)):
            return SMOLLM_SPLIT
        if (kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True)
                and not parts[1].get("add_prefix_space", False) and not parts[0].get("invert")
                and str(parts[0].get("behavior", "")).lower() == "isolated"
                and isinstance((parts[0].get("pattern") or {}).get("Regex"), str)):
            return parts[0]["pattern"]["Regex"]
    raise ClozelmError(f"{source}: pre-tokenizer {json.dumps(pre)[:120]} is not supported "
                       "(supported: ByteLevel; Digits + ByteLevel; Split(regex) + ByteLevel)")


def _spans_in_original(text: str, normalized: str, spans: list) -> list:
    """Spans over NFC(`text`) moved to `text`'s offsets. NFC works within each run of a character and the combining
    marks after it: a run it changes maps whole (a span that starts or ends inside it takes the run's start or
    end), the others character by character. Where NFC joins runs (Hangul jamo) no span can be placed: None."""
    runs = [i for i, c in enumerate(text) if i == 0 or not unicodedata.combining(c)] + [len(text)]
    start_of, end_of = [], []  # for each offset into `normalized`: where it starts / ends in `text`
    for a, b in zip(runs, runs[1:]):
        piece = unicodedata.normalize("NFC", text[a:b])
        same = piece == text[a:b]
        start_of += [a + j if same else a for j in range(len(piece))]
        end_of += [a + j if same or j == 0 else b for j in range(len(piece))]
    if len(start_of) != len(normalized):  # composed across runs: the offsets cannot be followed
        return [None] * len(spans)
    start_of.append(len(text))
    end_of.append(len(text))
    return [None if span is None else (start_of[span[0]], end_of[span[1]]) for span in spans]


def _nfc_of(normalizer, source: str) -> bool:
    if normalizer is None:
        return False
    if isinstance(normalizer, dict) and normalizer.get("type") == "NFC":
        return True
    raise ClozelmError(f"{source}: normalizer {json.dumps(normalizer)[:80]} is not supported (supported: none, NFC)")


def _template_adds_bos(post) -> bool:
    """Whether a tokenizer.json post-processor puts a special token before a single text (Llama 3's BOS)."""
    if isinstance(post, dict) and post.get("type") == "Sequence":
        return any(_template_adds_bos(p) for p in post.get("processors") or [])
    if isinstance(post, dict) and post.get("type") == "TemplateProcessing":
        single = post.get("single") or []
        return bool(single) and "SpecialToken" in single[0]
    return False
