"""lastword: a model that always says one word scores exactly the share of passages ending in it; passages are
split as lm-eval-harness splits LAMBADA, or cut from files; bad files are one-line errors."""

from __future__ import annotations

import json
import math

import pytest

from clozelm.errors import ClozelmError
from clozelm.eval import evaluate
from clozelm.eval.lastword import MAX_CONTEXT_WORDS, MIN_CONTEXT_WORDS, items_from_documents
from handbuilt import NeighbourMLM

from .conftest import SENTENCES
from .handmade import ConstantLM, HandModel

PASSAGES = ["the dog ran home", "a bird flew away", "the cat sat down and then the dog ran home",
            "the dog ran away from home", "the cat sat"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_model_that_always_says_home(tok, tmp_path):
    home = tok.encode(" home")
    assert len(home) == 1
    model = HandModel(ConstantLM(tok, home[0]), tok, "clm")
    lambada = write_jsonl(tmp_path / "lambada.jsonl", [{"text": t} for t in PASSAGES])
    result = evaluate(model, tasks="lastword", lambada=lambada)["tasks"]["lastword"]
    # Three passages of five end in "home": the greedy check and the fill both get exactly those.
    assert result["n"] == 5
    assert result["left_only_accuracy"] == 3 / 5
    assert result["accuracy"] == 3 / 5
    # lm-eval's perplexity: exp(-mean log P(" word" | context)); each last word here is one token.
    p_home = math.exp(5) / (math.exp(5) + tok.vocab_size - 1)
    p_other = 1 / (math.exp(5) + tok.vocab_size - 1)
    targets = [" home", " away", " home", " home", " sat"]
    assert [len(tok.encode(t)) for t in targets] == [1] * 5
    logp = [math.log(p_home if t == " home" else p_other) for t in targets]
    assert result["perplexity"] == pytest.approx(math.exp(-sum(logp) / 5), rel=1e-5)
    assert result["source"] == str(lambada)


def test_masked_models_report_fill_accuracy_only(tok, tmp_path):
    model = HandModel(NeighbourMLM(tok, SENTENCES), tok, "mlm")
    lambada = write_jsonl(tmp_path / "lambada.jsonl", [{"text": "the dog ran home"}, {"text": "the cat sat down"}])
    result = evaluate(model, tasks="lastword", lambada=lambada)["tasks"]["lastword"]
    assert result["accuracy"] == 1.0 and result["n"] == 2  # the left neighbour says it
    assert "left_only_accuracy" not in result


def test_passages_cut_from_files():
    sentence = "The quick brown fox jumps over the lazy dog near the river bank."
    text = " ".join([sentence] * 4) + "\n\nA short one ends here.\n\nIt was (late.\n\n" + "word " * 90 + "end."
    items = items_from_documents([("doc", text)], fits=lambda word: True)
    flat = " ".join(text.split())
    for context, word in items:
        assert MIN_CONTEXT_WORDS <= len(context.split()) <= MAX_CONTEXT_WORDS
        assert (context + " " + word) in flat
    # 13 words a sentence: the third is the first with 30 words before its last; "(late" is glued to "("
    assert [word for _, word in items] == ["bank", "bank", "here"]
    assert items[0][0] == " ".join([sentence] * 2) + " " + sentence[:-len(" bank.")]


@pytest.mark.parametrize("line,message", [
    ("not json", ":1: not a JSON object"),
    ('{"text": "the dog ran home\\n"}', ":1: the passage ends with whitespace"),
    ('{"text": "the dog ran home "}', ":1: the passage ends with whitespace"),
    ('{"text": "name ____ and the dog ran home"}', ":1: the passage holds '____', which fill reads as a blank"),
    ('{"text": "the dog [MASK] home"}', ":1: the passage holds '[MASK]'"),
    ('{"text": "the dog ran ' + "q" * 2000 + '"}', ":1: the last word is longer than the model's context"),
    ('{"txt": "a b"}', ':1: expected {"text": ...}'),
    ('{"text": "single"}', ":1: the passage has no word before its last one"),
    ('[1, 2]', ":1: expected a JSON object"),
])
def test_bad_lambada_files(tok, tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    model = HandModel(ConstantLM(tok, 0), tok, "clm")
    with pytest.raises(ClozelmError, match=message.replace("{", r"\{").replace("[", r"\[")):
        evaluate(model, tasks="lastword", lambada=path)


def test_lastword_needs_passages(tok):
    model = HandModel(ConstantLM(tok, 0), tok, "clm")
    with pytest.raises(ClozelmError, match="--lambada"):
        evaluate(model, tasks="lastword")


def test_passages_a_fill_would_misread_are_not_cut_from_files():
    sentence = "The quick brown fox jumps over the lazy dog near the river bank."
    plain = " ".join([sentence] * 4)
    assert len(items_from_documents([("doc", plain)], fits=lambda word: True)) == 2
    blank = plain.replace("lazy", "___", 1)  # in the context of both passages: fill would read a second blank
    assert items_from_documents([("doc", blank)], fits=lambda word: True) == []
    assert items_from_documents([("doc", plain)], fits=lambda word: word != "bank") == []


def test_a_hopeless_last_word_gives_an_infinite_perplexity_not_a_crash(tok, tmp_path):
    home = tok.encode(" home")
    model = HandModel(ConstantLM(tok, home[0], margin=800.0), tok, "clm")
    lambada = write_jsonl(tmp_path / "lambada.jsonl", [{"text": "the dog ran away"}])
    result = evaluate(model, tasks="lastword", lambada=lambada)["tasks"]["lastword"]
    assert result["perplexity"] == math.inf and result["left_only_accuracy"] == 0.0


def test_a_passage_holding_a_unicode_line_separator_is_one_line(tok, tmp_path):
    """JSON strings may hold U+2028, U+2029 and U+0085 raw (json.dumps with ensure_ascii=False writes them so):
    only a newline ends a JSON Lines record."""
    import json
    path = tmp_path / "lambada.jsonl"
    path.write_text("\r\n".join(json.dumps({"text": f"the dog ran{sep}home the cat sat down"}, ensure_ascii=False)
                                for sep in ("\u2028", "\u2029", "\x85")) + "\n", encoding="utf-8")
    model = HandModel(ConstantLM(tok, 0), tok, "clm")
    assert evaluate(model, tasks="lastword", lambada=path)["tasks"]["lastword"]["n"] == 3


def test_a_file_that_starts_with_a_byte_order_mark_reads_as_without_it(tok, tmp_path):
    """Windows editors save UTF-8 with a byte order mark; json.loads refuses one at the start of the first line."""
    model = HandModel(ConstantLM(tok, tok.encode(" home")[0]), tok, "clm")
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"text": t} for t in PASSAGES])
    marked = tmp_path / "marked.jsonl"
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    results = [evaluate(model, tasks="lastword", lambada=path)["tasks"]["lastword"] for path in (plain, marked)]
    assert results[1]["n"] == 5 and {**results[1], "source": None} == {**results[0], "source": None}
