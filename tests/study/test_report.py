"""The study's verdicts on hand-made results: when a difference counts, and the noise it is measured against."""

from __future__ import annotations

import math

from clozelm.study.report import FIGURES, runs_table, stats_by_objective, verdict

LASTWORD = next(f for f in FIGURES if f.task == "lastword" and f.key == "accuracy")
PPL = next(f for f in FIGURES if f.task == "ppl")


def _runs(accuracies: dict[str, list[float]], n: int) -> list[dict]:
    return [{"objective": name, "seed": seed, "tasks": {"lastword": {"accuracy": a, "n": n},
                                                         "ppl": {"bits_per_byte": 2 - a}}}
            for name, values in accuracies.items() for seed, a in enumerate(values)]


def test_an_accuracy_counts_the_sampling_noise_of_its_items_that_seeds_do_not_shrink():
    # Three seeds agreeing exactly: no spread over seeds, but 10 items leave 0.7 vs 0.5 within the items' noise.
    runs = _runs({"clm": [0.7, 0.7, 0.7], "mlm": [0.5, 0.5, 0.5]}, n=10)
    stats = stats_by_objective(runs, LASTWORD)
    assert stats["clm"].spread == 0 and math.isclose(stats["clm"].se, math.sqrt(0.7 * 0.3 / 10))
    result = verdict(LASTWORD, stats)
    assert result["verdict"] == "within noise"
    assert math.isclose(result["two_standard_errors"], 2 * math.sqrt(0.7 * 0.3 / 10 + 0.5 * 0.5 / 10))
    # The same accuracies over 1,000 items: the difference is far beyond the noise.
    assert verdict(LASTWORD, stats_by_objective(_runs({"clm": [0.7] * 3, "mlm": [0.5] * 3}, n=1000), LASTWORD))[
        "verdict"] == "left-to-right"


def test_a_figure_without_items_is_judged_by_its_spread_over_seeds_alone():
    runs = _runs({"clm": [0.7, 0.72], "mlm": [0.5, 0.52]}, n=10)
    stats = stats_by_objective(runs, PPL)  # bits per byte 1.3 / 1.28 vs 1.5 / 1.48: no item count
    assert stats["clm"].items == [] and math.isclose(stats["clm"].se, stats["clm"].spread / math.sqrt(2))
    assert verdict(PPL, stats)["verdict"] == "left-to-right, not conclusive"  # masked bits per byte are a bound
    one_seed = stats_by_objective(_runs({"clm": [0.9], "mlm": [0.1]}, n=1000), LASTWORD)
    assert verdict(LASTWORD, one_seed)["verdict"] == "no noise estimate"


def test_seed_spread_and_item_noise_add_up():
    # Seeds that disagree and a finite test: se^2 = sd^2 / seeds + p (1 - p) / items, and the two objectives'
    # errors combine in quadrature.
    runs = _runs({"clm": [0.60, 0.64, 0.68], "mlm": [0.40, 0.50, 0.45]}, n=200)
    stats = stats_by_objective(runs, LASTWORD)
    for name, values in (("clm", [0.60, 0.64, 0.68]), ("mlm", [0.40, 0.50, 0.45])):
        p, sd = sum(values) / 3, math.sqrt(sum((v - sum(values) / 3) ** 2 for v in values) / 2)
        assert math.isclose(stats[name].se, math.sqrt(sd ** 2 / 3 + p * (1 - p) / 200))
    result = verdict(LASTWORD, stats)
    assert math.isclose(result["two_standard_errors"], 2 * math.hypot(stats["clm"].se, stats["mlm"].se))
    assert result["verdict"] == "left-to-right" and math.isclose(result["difference"], 0.64 - 0.45)


def test_a_masked_bound_counts_its_monte_carlo_error_that_seeds_do_not_shrink():
    # clm 3.700 / 3.702 against mdlm 3.650 / 3.652 bits per byte: the seeds alone make mdlm's lead look real, but
    # its bound was sampled with a standard error of 0.05 (the same masks for every seed): within noise.
    runs = [{"objective": "clm", "seed": s, "tasks": {"ppl": {"bits_per_byte": 3.700 + 0.002 * s}}} for s in (0, 1)]
    runs += [{"objective": "mdlm", "seed": s, "tasks": {"ppl": {"bits_per_byte": 3.650 + 0.002 * s,
                                                               "bits_per_byte_se": 0.05}}} for s in (0, 1)]
    stats = stats_by_objective(runs, PPL)
    assert stats["clm"].monte_carlo == [] and stats["mdlm"].monte_carlo == [0.05, 0.05]
    assert math.isclose(stats["mdlm"].se, math.sqrt(stats["mdlm"].spread ** 2 / 2 + 0.05 ** 2))
    assert verdict(PPL, stats)["verdict"] == "within noise"
    # A precise bound (se 0.0001) leaves the same lead beyond the noise: against the claim.
    for run in runs[2:]:
        run["tasks"]["ppl"]["bits_per_byte_se"] = 0.0001
    assert verdict(PPL, stats_by_objective(runs, PPL))["verdict"] == "bidirectional"


def test_one_seed_names_a_tie_as_a_tie():
    tie = verdict(LASTWORD, stats_by_objective(_runs({"clm": [0.0], "mlm": [0.0]}, n=100), LASTWORD))
    assert tie["verdict"] == "no noise estimate" and tie["text"].startswith("a tie (clm and mlm both 0)")
    ahead = verdict(LASTWORD, stats_by_objective(_runs({"clm": [0.3], "mlm": [0.2]}, n=100), LASTWORD))
    assert ahead["text"].startswith("clm is ahead")


def test_runs_trained_on_different_machines_are_said_to_be():
    runs = _runs({"clm": [0.3], "mlm": [0.2]}, n=100)
    for run, machine in zip(runs, ("Xeon, 2 threads", "EPYC, 2 threads")):
        run.update(params=1000, tokens=4096, train_seconds=60.0, held_out_loss=[[4096, 3.0]], machine=machine)
    table = "\n".join(runs_table(runs))
    assert table.count(" | 60.0 | 3.0000 | ") == 2 and "| Xeon, 2 threads |" in table and "| EPYC, 2 threads |" in table
    assert "trained on more than one machine" in table
    runs[1]["machine"] = runs[0]["machine"]
    assert "more than one machine" not in "\n".join(runs_table(runs))
    del runs[1]["machine"]  # a record from before runs said where they trained
    assert "more than one machine" not in "\n".join(runs_table(runs))
