"""`evaluate` itself: what it reads (one path or many), which options it refuses because nothing would read
them, and that every input is checked before the first forward pass, a task run by default without input to
measure being left out and said."""

from __future__ import annotations

from pathlib import Path

import pytest

from clozelm.errors import ClozelmError
from clozelm.eval import EvalOptions, evaluate, markdown, table
from handbuilt import BigramLM, NeighbourMLM

from .conftest import SENTENCES
from .handmade import HandModel


def _text(tmp_path, text="the cat sat down") -> Path:
    path = tmp_path / "held-out.txt"
    path.write_text(text)
    return path


@pytest.mark.parametrize("as_given", [str, Path, lambda p: [p]])
def test_one_path_is_one_file(tok, tmp_path, as_given):
    model = HandModel(BigramLM(tok, SENTENCES), tok, "clm")
    path = _text(tmp_path)
    result = evaluate(model, as_given(path), tasks="ppl")
    assert result["files"] == [str(path)] and result["tasks"]["ppl"]["tokens"] == 4


@pytest.mark.parametrize("objective,options,message", [
    ("clm", {"limit": 3}, "limit is read by the lastword, cloze, pairs and probe tasks, which are not run here"),
    ("clm", {"folds": 3}, "folds is read by the probe task, which is not run here"),
    ("clm", {"samples": 4}, "samples shapes a masked model's figures; this model is causal"),
    ("clm", {"pll_tokens": 0}, "pll_tokens shapes a masked model's figures"),
    ("mlm", {"pair_samples": 8}, "pair_samples is read by the pairs task"),
])
def test_a_keyword_option_nothing_reads_is_refused(tok, tmp_path, objective, options, message):
    network = BigramLM(tok, SENTENCES) if objective == "clm" else NeighbourMLM(tok, SENTENCES)
    with pytest.raises(ClozelmError, match=message):
        evaluate(HandModel(network, tok, objective), [_text(tmp_path)], tasks="ppl", **options)


def test_pair_samples_are_read_only_where_the_bound_scores_pairs(tok, tmp_path):
    pll = HandModel(NeighbourMLM(tok, SENTENCES), tok, "mlm")
    with pytest.raises(ClozelmError, match="scored by pseudo-log-likelihood"):
        evaluate(pll, tasks="pairs", pair_samples=8, limit=1)
    assert evaluate(pll, tasks="pairs", pair_samples=8, limit=1, masked_score="bound")["tasks"]["pairs"]["n"] == 7


def test_an_options_object_is_not_judged_per_call_and_a_dict_is_refused(tok, tmp_path):
    # One EvalOptions may serve many calls (a study evaluates task by task with one): its fields are not refused.
    model = HandModel(BigramLM(tok, SENTENCES), tok, "clm")
    shared = EvalOptions(limit=2, samples=4)
    assert evaluate(model, [_text(tmp_path)], tasks="ppl", options=shared)["tasks"]["ppl"]["tokens"] == 4
    with pytest.raises(ClozelmError, match="options must be an EvalOptions, not dict"):
        evaluate(model, [_text(tmp_path)], tasks="ppl", options={"stride": 5})


def test_inputs_are_checked_before_the_first_forward_pass(tok, tmp_path):
    model = HandModel(BigramLM(tok, SENTENCES), tok, "clm")
    calls = []
    # lastword asked for, and no sentence of the file ends a passage long enough: refused before ppl runs
    with pytest.raises(ClozelmError, match="lastword: no passage found"):
        evaluate(model, [_text(tmp_path)], tasks="ppl,lastword", on_progress=lambda *a: calls.append(a))
    assert calls == []


def test_a_default_task_without_input_to_measure_is_left_out_and_said(tok, tmp_path):
    model = HandModel(BigramLM(tok, SENTENCES), tok, "clm")
    result = evaluate(model, [_text(tmp_path)], limit=1)  # the default tasks: ppl, lastword, cloze, pairs
    assert list(result["tasks"]) == ["ppl", "pairs"]
    assert set(result["skipped"]) == {"lastword", "cloze"} and "no passage found" in result["skipped"]["lastword"]
    assert any(line.split()[:3] == ["lastword", "not", "run"] for line in table(result).splitlines())
    assert "| lastword | not run |" in markdown(result)


def test_keywords_left_at_none_ask_for_nothing_and_any_path_like_is_one_file(tok, tmp_path):
    import os

    class Where(os.PathLike):
        def __init__(self, path):
            self.path = path

        def __fspath__(self):
            return str(self.path)

    model = HandModel(BigramLM(tok, SENTENCES), tok, "clm")
    result = evaluate(model, Where(_text(tmp_path)), tasks="ppl", lambada=None, limit=None, stride=None)
    assert result["tasks"]["ppl"]["tokens"] == 4


def test_json_has_no_infinity(tok, tmp_path):
    import json

    from clozelm.eval import to_json
    text = to_json({"tasks": {"lastword": {"perplexity": float("inf"), "accuracy": 0.5}}})
    assert json.loads(text) == {"tasks": {"lastword": {"perplexity": None, "accuracy": 0.5}}}
