"""TrainConfig checks every field where it is made: type, range, finite; one line naming the field."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from clozelm.errors import ClozelmError
from clozelm.training import InvalidTrainConfig, TrainConfig
from clozelm.training.config import default_of, flag, names_in


@pytest.mark.parametrize("field, value", [
    ("steps", 0), ("steps", -3), ("steps", 6.5), ("steps", True), ("steps", "100"), ("steps", 2**70),
    ("batch_size", 0), ("grad_accum", [1]), ("seq_len", 0), ("seed", -1), ("threads", 0),
    ("threads", 10**6), ("warmup", -1), ("eval_examples", 0), ("stop_after", 0),
    ("lr", 0.0), ("lr", -1e-3), ("lr", math.nan), ("lr", math.inf), ("lr", "1e-3"), ("lr", True),
    ("mask_rate", 0.0), ("mask_rate", 1.0), ("fim_rate", 1.5), ("spm_rate", -0.1), ("min_lr_ratio", math.nan),
    ("dropout", 1.0), ("beta1", 1.0), ("beta2", -0.5), ("adam_eps", 0.0), ("grad_clip", -1.0),
    ("weight_decay", -math.inf), ("precision", "fp16"), ("objective", "gpt"), ("device", "tpu"),
    ("preset", "huge"), ("compile", 1), ("resume", "yes"), ("progress", "no"),
    ("files", 3), ("files", [""]), ("out", ""), ("out", 5), ("tokenizer", ["a"]), ("valid", [None]),
])
def test_a_bad_value_is_one_line_naming_the_field(field, value):
    with pytest.raises(InvalidTrainConfig) as caught:
        TrainConfig(**{field: value})
    message = str(caught.value)
    assert message.startswith(f"{field} must be ") and "\n" not in message, message
    assert caught.value.problems[0][0] == field
    assert isinstance(caught.value, ClozelmError)


def test_values_are_normalised():
    cfg = TrainConfig(files="one.txt", valid=[Path("v.txt")], out=Path("runs/x"), steps=np.int64(5), lr=1, seed=3)
    assert cfg.files == ("one.txt",) and cfg.valid == ("v.txt",) and cfg.out == "runs/x"
    assert cfg.steps == 5 and type(cfg.steps) is int and cfg.lr == 1.0 and type(cfg.lr) is float
    assert TrainConfig(files=["a", Path("b")]).files == ("a", "b")


def test_every_problem_is_listed_and_the_cli_names_flags():
    with pytest.raises(InvalidTrainConfig) as caught:
        TrainConfig(steps=0, mask_rate=2.0)
    assert [name for name, _ in caught.value.problems] == ["steps", "mask_rate"]
    flags = {name: flag(name) for name in ("steps", "mask_rate")}
    assert caught.value.describe(flags).startswith("--steps must be an integer >= 1, got 0; --mask-rate must be ")


def test_resume_and_overwrite_contradict():
    with pytest.raises(InvalidTrainConfig, match="resume and overwrite contradict"):
        TrainConfig(out="r", resume=True, overwrite=True)
    with pytest.raises(InvalidTrainConfig) as caught:
        TrainConfig(out="r", resume=True, overwrite=True)
    assert caught.value.describe({"resume": "--resume", "overwrite": "--overwrite"}) == \
        "--resume and --overwrite contradict each other"


def test_unset_means_automatic_and_defaults_live_on_the_fields():
    cfg = TrainConfig()
    assert all(getattr(cfg, name) is None for name in names_in("recipe", "schedule", "numerics"))
    assert default_of("steps") == 1000 and default_of("batch_size") == 16 and default_of("mask_rate") == 0.15
    filled = cfg.with_defaults("recipe", objective="mlm", lr=1e-3)
    assert (filled.steps, filled.objective, filled.lr, filled.beta2, filled.seq_len) == (1000, "mlm", 1e-3, 0.95, None)
    assert filled.eval_every is None  # another group


def test_a_changed_field_is_checked_again_by_replace_and_from_dict():
    cfg = TrainConfig(steps=10)
    cfg.steps = -1
    from dataclasses import replace
    with pytest.raises(InvalidTrainConfig, match="steps"):
        replace(cfg)
    assert TrainConfig.from_dict({"steps": 7, "someday": 1}).steps == 7
    with pytest.raises(InvalidTrainConfig, match="lr"):
        TrainConfig.from_dict({"lr": "fast"})
    with pytest.raises(ClozelmError, match="object of settings"):
        TrainConfig.from_dict([1, 2, 3])


@pytest.mark.parametrize("value", ["{mlm}", "{0}", "{a.b}", "{", "}{steps"])
def test_braces_in_a_value_are_shown_as_given(value):
    # the text names other fields as {field}; a user's value is no template (it raised, or was rewritten)
    with pytest.raises(InvalidTrainConfig) as caught:
        TrainConfig(objective=value)
    assert repr(value) in caught.value.describe({"objective": "--objective"})


def test_held_out_text_comes_from_one_place():
    with pytest.raises(InvalidTrainConfig) as caught:
        TrainConfig(valid=["v.txt"], valid_every=10)
    assert caught.value.describe({"valid_every": "--valid-every", "valid": "--valid"}).startswith(
        "--valid-every holds out part of the training text, and --valid gives the held-out text itself")


def test_holding_out_every_document_is_refused_before_anything_is_tokenized():
    for n in (0, 2, 50):
        assert TrainConfig(valid_every=n).valid_every == n
    with pytest.raises(InvalidTrainConfig) as caught:
        TrainConfig(valid_every=1)
    assert caught.value.describe({"valid_every": "--valid-every"}).startswith(
        "--valid-every 1 would hold out every document: give 0 (no held-out split) or 2 or more")


def test_a_preset_fixes_layers_width_and_heads_as_in_the_study():
    assert TrainConfig(preset="gpt2", n_positions=256, n_inner=1024, dropout=0.1).preset == "gpt2"
    with pytest.raises(InvalidTrainConfig) as caught:
        TrainConfig(preset="gpt2", n_embd=32, n_head=2)
    assert caught.value.describe({"n_embd": "--n-embd", "preset": "--preset"}) == (
        "--n-embd and --preset contradict each other: the preset fixes the layers, the width and the heads")


def test_a_flag_whose_default_is_true_is_given_when_false():
    assert TrainConfig(fused_loss=False).given("recipe") == {"fused_loss": False}
    assert TrainConfig(keep_best=False).given("recipe") == {"keep_best": False}
    assert TrainConfig(skip_bad_files=False).given("setup") == {}  # False is its unset meaning
    # what a held-out loss is measured on, and whether the best is kept, is the recipe's: a resume refuses a change
    assert {"eval_examples", "eval_spread", "keep_best"} <= set(names_in("recipe"))
