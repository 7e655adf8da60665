"""pairs: known answers on a bigram model and a masked model; BLiMP's field names; ties are misses; the
shipped set is the same everywhere and holds >= 200 pairs of each phenomenon."""

from __future__ import annotations

import hashlib
import json
import statistics

import pytest

from clozelm.errors import ClozelmError
from clozelm.eval import EvalOptions, evaluate
from clozelm.eval.minimal_pairs import PHENOMENA, generate
from clozelm.eval.pairs import sentence_scores
from handbuilt import BigramLM, NeighbourMLM

from .conftest import SENTENCES
from .handmade import ConstantLM, HandModel

# Good: sentences the models were built from; bad: the same words in an order they never saw.
SEEN = [("the dog ran home", "the ran dog home"), ("the cat sat down", "cat the sat down"),
        ("a bird flew away", "a flew bird away")]


def pairs_file(tmp_path, rows):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("network,objective", [(BigramLM, "clm"), (NeighbourMLM, "mlm")])
def test_known_answers(tok, tmp_path, network, objective):
    rows = [{"good": g, "bad": b, "phenomenon": "order"} for g, b in SEEN]
    rows += [{"good": b, "bad": g, "phenomenon": "backwards"} for g, b in SEEN]  # labelled the wrong way round
    model = HandModel(network(tok, SENTENCES), tok, objective)
    result = evaluate(model, tasks="pairs", pairs=pairs_file(tmp_path, rows))["tasks"]["pairs"]
    assert result["phenomena"] == {"order": {"accuracy": 1.0, "n": 3}, "backwards": {"accuracy": 0.0, "n": 3}}
    assert result["accuracy"] == 0.5 and result["n"] == 6
    assert result["score"] == ("log-probability" if objective == "clm" else "word-l2r pseudo-log-likelihood")


def test_the_bound_scores_pairs_too(tok, tmp_path):
    rows = [{"good": g, "bad": b, **({"phenomenon": None} if i % 2 else {})} for i, (g, b) in enumerate(SEEN)]
    model = HandModel(NeighbourMLM(tok, SENTENCES), tok, "mlm")
    result = evaluate(model, tasks="pairs", pairs=pairs_file(tmp_path, rows), masked_score="bound",
                      pair_samples=64)["tasks"]["pairs"]
    assert result["accuracy"] == 1.0 and result["score"] == "minus the masked-diffusion bound"
    assert list(result["phenomena"]) == ["pairs"]  # no phenomenon given (or null): the file's name


def test_pair_samples_set_the_noise_of_the_bound(tok):
    # A pair's two sentences differ by a few nats; the bound's Monte Carlo noise on each must be far below that,
    # so pairs draw `pair_samples` mask rates per sentence (not ppl's `samples`): the noise falls as 1/sqrt(N).
    model = HandModel(NeighbourMLM(tok, SENTENCES), tok, "mlm")

    def spread(n: int) -> float:
        scores = [sentence_scores(model, [SEEN[0][0]], EvalOptions(pair_samples=n), "bound", rates_seed=[seed])[0]
                  for seed in range(12)]
        return statistics.stdev(scores)

    assert spread(128) < spread(2) / 3
    with pytest.raises(ClozelmError, match="pair_samples must be a positive integer"):
        EvalOptions(pair_samples=0)


def test_blimp_field_names_and_ties(tok, tmp_path):
    rows = [{"sentence_good": "the dog ran home", "sentence_bad": "the dog ran away", "UID": "tie"}]
    model = HandModel(ConstantLM(tok, 0), tok, "clm")  # every sentence of as many tokens scores the same
    result = evaluate(model, tasks="pairs", pairs=pairs_file(tmp_path, rows))["tasks"]["pairs"]
    assert result["phenomena"] == {"tie": {"accuracy": 0.0, "n": 1}}


@pytest.mark.parametrize("row,message", [({"good": "a b"}, ':1: expected {"good"'),
                                         ({"good": "", "bad": "x"}, ":1: expected"),
                                         ({"good": 1, "bad": "x"}, ":1: expected")])
def test_bad_pairs_files(tok, tmp_path, row, message):
    model = HandModel(ConstantLM(tok, 0), tok, "clm")
    with pytest.raises(ClozelmError, match=message.replace("{", r"\{")):
        evaluate(model, tasks="pairs", pairs=pairs_file(tmp_path, [row]))


def test_the_shipped_set():
    rows = generate()
    assert rows == generate()
    counts = {name: sum(r["phenomenon"] == name for r in rows) for name in PHENOMENA}
    assert set(counts) == {"agreement_plain", "agreement_relative_clause", "agreement_prepositional_phrase",
                           "determiner_noun", "anaphor_agreement", "irregular_past_participle", "word_order_swap"}
    assert all(n >= 200 for n in counts.values())
    assert all(r["good"] != r["bad"] for r in rows)
    assert len({(r["good"], r["bad"]) for r in rows}) == len(rows)
    # The same bytes on every machine and Python: results stay comparable from run to run.
    digest = hashlib.sha256(json.dumps(rows).encode()).hexdigest()
    assert digest == SHIPPED_SHA256, digest


# English verbs whose past tense is their plain form ("The man read every day." is a good sentence), and the forms
# the set left out because standard dictionaries give them in both the past and the participle's place ("had
# forgot", "she sung"): none may make a bad sentence.
PAST_AS_PLAIN = {"read", "put", "cut", "hit", "let", "set", "shut", "hurt", "cast", "beat", "spread", "quit", "bet"}
EITHER_WAY = {"forgot", "hid", "drank", "sung", "sunk", "shrunk", "sprung", "stunk", "got", "proved", "showed"}


def test_no_bad_sentence_of_the_shipped_set_is_english():
    for r in generate():
        if r["phenomenon"] == "word_order_swap":
            continue
        (bad,) = [b.strip(".") for g, b in zip(r["good"].split(), r["bad"].split()) if g != b]
        if r["phenomenon"].startswith("agreement"):
            assert bad not in PAST_AS_PLAIN, r
        if r["phenomenon"] == "irregular_past_participle":
            assert bad not in EITHER_WAY, r


def test_the_shipped_set_differs_in_one_place():
    for r in generate():
        good, bad = r["good"].split(), r["bad"].split()
        if r["phenomenon"] == "word_order_swap":
            assert sorted(w.lower().strip(".") for w in good) == sorted(w.lower().strip(".") for w in bad)
        else:
            assert len(good) == len(bad) and sum(a != b for a, b in zip(good, bad)) == 1, r


SHIPPED_SHA256 = "d4eb76760e3f04a7d0bef0550686475e81ad49e4a5b94fe7f85614e427663909"
