from __future__ import annotations

import random
from pathlib import Path

import pytest

ADJ = "big small red green quick lazy old young happy sad".split()
NOUN = "cat dog bird fox horse mouse king queen farmer baker".split()
VERB = "sees chases likes finds meets follows helps calls".split()
PLACE = "river hill barn garden market castle".split()


def documents(n: int, seed: int) -> list[str]:
    """Little documents from a toy grammar: sentences long enough for the cloze and last-word tasks."""
    rng = random.Random(seed)
    return [" ".join(f"The {rng.choice(ADJ)} {rng.choice(NOUN)} {rng.choice(VERB)} the {rng.choice(ADJ)} "
                     f"{rng.choice(NOUN)} near the {rng.choice(PLACE)}." for _ in range(rng.randint(4, 8)))
            for _ in range(n)]


@pytest.fixture(autouse=True)
def _tiny_models_on_one_thread(one_thread):
    """Tiny models: one thread is faster."""


@pytest.fixture(scope="package")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study-corpus")
    (root / "a.txt").write_text("\n\n".join(documents(150, seed=1)) + "\n", encoding="utf-8")
    (root / "b.txt").write_text("\n\n".join(documents(150, seed=2)) + "\n", encoding="utf-8")
    return root
