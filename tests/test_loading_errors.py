"""Bad paths, corrupt or truncated weights and mismatched configs: one clear line, non-zero exit, never
random weights. Hub ids: the real huggingface_hub code path, exercised on a local cache in hub layout."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

import clozelm
from clozelm.errors import ClozelmError


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "clozelm", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, timeout=120)


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clozelm: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpt2")
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=120, n_positions=32)).save_pretrained(d)
    return d


def copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_info_prints_the_shape(gpt2_dir):
    r = run_cli("info", gpt2_dir)
    assert r.returncode == 0 and "gpt2, 2 layers x 32 wide" in r.stdout


def test_nonexistent_path(tmp_path):
    assert_one_line_error(run_cli("info", tmp_path / "nope"), "no such file or directory")


def test_file_instead_of_directory(gpt2_dir):
    assert_one_line_error(run_cli("info", gpt2_dir / "config.json"), "expects a model directory")


def test_directory_without_weights(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    assert_one_line_error(run_cli("info", tmp_path), "is not a model directory")


def test_corrupt_safetensors(gpt2_dir, tmp_path):
    d = copy(gpt2_dir, tmp_path / "m")
    (d / "model.safetensors").write_bytes(os.urandom(5000))
    assert_one_line_error(run_cli("info", d), "model.safetensors", "corrupt or truncated")


def test_truncated_safetensors(gpt2_dir, tmp_path):
    d = copy(gpt2_dir, tmp_path / "m")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert_one_line_error(run_cli("info", d), "corrupt or truncated")


def test_invalid_config_json(gpt2_dir, tmp_path):
    d = copy(gpt2_dir, tmp_path / "m")
    (d / "config.json").write_text("{not json")
    assert_one_line_error(run_cli("info", d), "config.json is not valid JSON")


def test_config_with_more_layers_lists_missing_tensors(gpt2_dir, tmp_path):
    d = copy(gpt2_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "n_layer": 3}))
    assert_one_line_error(run_cli("info", d), "missing", "h.2.attn.c_attn.weight")


def test_config_with_other_width_lists_misshaped_tensors(gpt2_dir, tmp_path):
    d = copy(gpt2_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "n_embd": 64}))
    assert_one_line_error(run_cli("info", d), "mis-shaped", "h.0.attn.c_proj.weight (32, 32) != (64, 64)")


def test_fewer_layers_in_config_lists_unexpected_tensors(gpt2_dir, tmp_path):
    d = copy(gpt2_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "n_layer": 1}))
    with pytest.raises(ClozelmError, match=r"unexpected \d+ tensors: h\.1\."):
        clozelm.load(d)


def test_unsupported_model_type(gpt2_dir, tmp_path):
    d = copy(gpt2_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    assert_one_line_error(run_cli("info", d), "unsupported model_type 'llama'")


def test_pickled_weights_load_with_weights_only(gpt2_dir, tmp_path):
    d = copy(gpt2_dir, tmp_path / "m")
    from safetensors.torch import load_file
    torch.save(load_file(d / "model.safetensors"), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    ref = clozelm.load(gpt2_dir)
    got = clozelm.load(d)
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(ref(ids).logits, got(ids).logits)


def test_malicious_pickle_is_refused(gpt2_dir, tmp_path):
    d = copy(gpt2_dir, tmp_path / "m")
    (d / "model.safetensors").unlink()
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"wte.weight": Exploit()}, d / "pytorch_model.bin")
    assert_one_line_error(run_cli("info", d), "could not be read as a PyTorch weights file")
    assert not marker.exists()


def test_convert_refuses_to_overwrite(gpt2_dir, tmp_path):
    out = tmp_path / "out"
    assert run_cli("convert", gpt2_dir, out).returncode == 0
    before = (out / "model.safetensors").read_bytes()
    assert_one_line_error(run_cli("convert", gpt2_dir, out), "refusing to overwrite")
    assert (out / "model.safetensors").read_bytes() == before
    assert run_cli("convert", gpt2_dir, out, "--overwrite").returncode == 0


def test_hub_id_offline_names_the_id_and_the_fix(tmp_path):
    r = run_cli("info", "gpt2-medium", env={"HF_HUB_CACHE": str(tmp_path)})
    assert_one_line_error(r, "'gpt2-medium'", "local directory")


def test_hub_id_resolves_through_huggingface_hub_cache(gpt2_dir, tmp_path, monkeypatch):
    """The real download path (snapshot_download), served from a local cache in the hub's layout."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--someone--tiny-gpt2"
    shutil.copytree(gpt2_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    model = clozelm.load("someone/tiny-gpt2")
    ref = clozelm.load(gpt2_dir)
    ids = torch.tensor([[5, 6, 7]])
    assert torch.equal(model(ids).logits, ref(ids).logits)


def test_clozelm_config_with_bad_values_is_one_line(tmp_path):
    from clozelm.model import ModelConfig, Transformer
    cfg = ModelConfig(vocab_size=40, n_positions=8, n_embd=16, n_layer=1, n_head=2, causal=False, pre_ln=True, head="mlm")
    Transformer(cfg).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    for bad, fragment in [({**saved["clozelm_config"], "n_layer": "two"}, "invalid clozelm_config"),
                          ({**saved["clozelm_config"], "heads": 3}, "unknown model config keys: heads"),
                          (None, "needs a 'clozelm_config' object")]:
        (tmp_path / "config.json").write_text(json.dumps({**saved, "clozelm_config": bad}))
        assert_one_line_error(run_cli("info", tmp_path), fragment)
