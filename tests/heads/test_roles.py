"""Head roles, checked on a hand-built model whose layer-0 heads are wired to known patterns through
one-hot positions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clozelm.heads import attention_map
from clozelm.heads.roles import head_roles

from .helpers import handbuilt


@pytest.mark.parametrize("causal", [True, False])
def test_report_labels_handbuilt_heads(bpe, causal, tmp_path):
    model = handbuilt(bpe, causal)
    maps = attention_map(model, "The keeper lit the lamp and wrote one line in a blue notebook.")
    first_layer = maps.attentions[0]
    T = maps.n_tokens
    rows = np.arange(1, T)
    assert first_layer[0][rows, rows - 1].min() > 0.99
    assert first_layer[1][:, 0].min() > 0.99
    visible = np.arange(1, T + 1) if causal else np.full(T, T)
    assert np.allclose(first_layer[2], np.tril(np.ones((T, T))) / visible[:, None] if causal else 1 / T, atol=1e-5)

    report = head_roles(model)
    assert report.labels[0][:3] == ["previous", "first", "broad"]
    assert report.labels[0][3] == (None if causal else "next")
    assert report.scores["previous"][0, 0] > 0.99 and report.scores["first"][0, 1] > 0.99
    assert report.scores["broad"][0, 2] > 0.99
    assert np.isnan(report.scores["next"]).all() == causal

    paths = report.write(tmp_path / "report")
    assert [p.name for p in paths] == ["heads.md", "heads.json", "heads.png"]
    data = json.loads(paths[1].read_text())
    assert data["labels"][0][:3] == ["previous", "first", "broad"]
    assert {"layer": 0, "head": 0, "label": "previous"}.items() <= data["heads"][0].items()
    markdown = paths[0].read_text()
    assert "L0H0 (1.00)" in markdown and "L0H1 (1.00)" in markdown
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
