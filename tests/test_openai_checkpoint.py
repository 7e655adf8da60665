"""OpenAI's original GPT-2 checkpoint format, written by real TensorFlow (an isolated oracle venv made by
.ci/run) and read by clozelm's TensorFlow-free reader."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import clozelm
from clozelm.errors import ClozelmError

TF_PYTHON = os.environ.get("CLOZELM_TF_PYTHON", "/opt/clozelm-tf-oracle/bin/python")
WRITER = Path(__file__).parent / "oracles" / "write_tf_checkpoint.py"
CONV1D = ("attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj")


def openai_names(hf: transformers.GPT2LMHeadModel) -> dict[str, np.ndarray]:
    out = {}
    for name, t in hf.transformer.state_dict().items():
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        a = t.numpy()
        parts = name.split(".")
        if parts[0] in ("wte", "wpe"):
            out[f"model/{parts[0]}"] = a
        elif parts[0] == "ln_f":
            out[f"model/ln_f/{'g' if parts[1] == 'weight' else 'b'}"] = a
        else:  # h.3.attn.c_attn.weight -> model/h3/attn/c_attn/w with OpenAI's [1, in, out] conv shape
            module = "/".join(parts[2:-1])
            if parts[-1] == "weight":
                kind, a = ("w", a[None]) if module in CONV1D else ("g", a)
            else:
                kind = "b"
            out[f"model/h{parts[1]}/{module}/{kind}"] = a
    return out


@pytest.fixture(scope="module")
def openai_dir(tmp_path_factory):
    if not Path(TF_PYTHON).exists():
        pytest.fail(f"TensorFlow oracle {TF_PYTHON} missing: run .ci/run (it builds the venv) or set CLOZELM_TF_PYTHON")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=3, n_embd=64, n_head=4, vocab_size=300, n_positions=48)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    d = tmp_path_factory.mktemp("openai")
    np.savez(d / "tensors.npz", **openai_names(hf))
    subprocess.run([TF_PYTHON, str(WRITER), str(d / "tensors.npz"), str(d)], check=True, capture_output=True,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""})
    (d / "tensors.npz").unlink()
    (d / "hparams.json").write_text(json.dumps({"n_vocab": 300, "n_ctx": 48, "n_embd": 64, "n_head": 4, "n_layer": 3}))
    return d, hf


def test_tf_checkpoint_logits_match(openai_dir):
    d, hf = openai_dir
    assert (d / "model.ckpt.index").exists() and (d / "model.ckpt.data-00000-of-00001").exists()
    ours = clozelm.load(d)
    ids = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        assert (ours(ids).logits - hf(ids).logits).abs().max() <= 1e-5


def test_tf_checkpoint_converts_to_hf(openai_dir, tmp_path):
    d, hf = openai_dir
    clozelm.load(d).save_pretrained(tmp_path)
    reopened = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 300, (1, 12))
    with torch.no_grad():
        assert (reopened(ids).logits - hf(ids).logits).abs().max() <= 1e-5


def test_truncated_tf_checkpoint_is_a_clear_error(openai_dir, tmp_path):
    d, _ = openai_dir
    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    data = bad / "model.ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(ClozelmError, match="corrupt or truncated"):
        clozelm.load(bad)
    index = bad / "model.ckpt.index"
    index.write_bytes(index.read_bytes()[:-20])
    with pytest.raises(ClozelmError, match="not a readable TensorFlow checkpoint"):
        clozelm.load(bad)


def test_tf_checkpoint_with_missing_layer_lists_it(openai_dir, tmp_path):
    d, _ = openai_dir
    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    (bad / "hparams.json").write_text(json.dumps({"n_vocab": 300, "n_ctx": 48, "n_embd": 64, "n_head": 4, "n_layer": 4}))
    with pytest.raises(ClozelmError, match=r"missing \d+ tensors: h\.3\."):
        clozelm.load(bad)


def test_a_convolution_weight_of_the_wrong_rank_is_one_line():
    from clozelm.weights.openai_tf import gpt2_from_openai
    with pytest.raises(ClozelmError, match=r"model/h0/attn/c_attn/w has shape \[3\]: expected \[1, in, out\]"):
        gpt2_from_openai({"model/h0/attn/c_attn/w": np.zeros(3, dtype=np.float32)})
