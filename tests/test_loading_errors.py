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


def test_file_instead_of_directory(gpt2_dir, tmp_path):
    assert_one_line_error(run_cli("info", gpt2_dir / "config.json"), "expects a model directory")
    (tmp_path / "model.gguf").write_text("not a GGUF file")
    assert_one_line_error(run_cli("info", tmp_path / "model.gguf"), "not (no GGUF header)")
    assert_one_line_error(run_cli("tokenize", "hi", "--tokenizer", gpt2_dir / "config.json"),
                          "is a file; a tokenizer is a directory")


@pytest.mark.parametrize("present, missing", [("vocab.json", "merges.txt"), ("merges.txt", "vocab.json"),
                                              ("vocab.bpe", "encoder.json")])
def test_half_a_bpe_tokenizer_is_named_not_taken_for_none(gpt2_dir, tmp_path, present, missing):
    """A model directory with one file of a byte-level BPE pair is an incomplete copy: loading it says which file is
    missing, where it used to load the model with no tokenizer at all."""
    d = copy(gpt2_dir, tmp_path / "m")
    (d / present).write_text('{"a": 0}' if present.endswith(".json") else "#version: 0.2\n", encoding="utf-8")
    for result in (run_cli("info", d), run_cli("tokenize", "hi", "--tokenizer", d)):
        assert_one_line_error(result, f"has {present} but not {missing}")


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
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "t5"}))  # llama is supported now
    assert_one_line_error(run_cli("info", d), "unsupported model_type 't5'")


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
    # said before the model is loaded (a load may take minutes): a model that is not there is not even looked for
    assert_one_line_error(run_cli("convert", tmp_path / "no-such-model", out), "refusing to overwrite")
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
    from clozelm.loaded import Model
    from clozelm.model import ModelConfig, Transformer
    cfg = ModelConfig(vocab_size=40, n_positions=8, n_embd=16, n_layer=1, n_head=2, causal=False, pre_ln=True, head="mlm")
    Model(Transformer(cfg)).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    for bad, fragment in [({**saved["clozelm_config"], "n_layer": "two"}, "invalid clozelm_config"),
                          ({**saved["clozelm_config"], "heads": 3}, "unknown model config keys: heads"),
                          (None, "needs a 'clozelm_config' object")]:
        (tmp_path / "config.json").write_text(json.dumps({**saved, "clozelm_config": bad}))
        assert_one_line_error(run_cli("info", tmp_path), fragment)


# ---------------------------------------------------------------- issue 18: one validation of configs

DEFAULT_DIR = Path(clozelm.__file__).parent / "defaults" / "default"
BAD_CONFIGS = [  # (change to the default model's config.json, what the one line says)
    ("[1,2,3]", "holds an array, expected a JSON object"),
    ({"n_embd": "384"}, 'n_embd must be an integer, got "384"'),
    ({"n_layer": 6.5}, "n_layer must be an integer, got 6.5"),
    ({"n_head": None}, "n_head must be an integer, got null"),
    ({"layer_norm_epsilon": "abc"}, 'layer_norm_epsilon must be a finite number, got "abc"'),
    ({"layer_norm_epsilon": float("nan")}, "layer_norm_epsilon must be a finite number, got NaN"),
    ({"n_layer": 10**6}, "n_layer must be from 1 to"),
    ({"n_positions": True}, "n_positions must be an integer, got true"),
    ({"activation_function": ["gelu"]}, "unsupported activation"),
    ({"clozelm_extra": None}, "clozelm_extra must be an object, got null"),
    ("DEL n_embd", "config.json has no 'n_embd'"),
    ('{"model_type": "gpt2", "n_embd": 1' + "0" * 5000 + "}", "is not valid JSON"),
]


def bad_copy(tmp_path, change) -> Path:
    d = tmp_path / "M"
    shutil.copytree(DEFAULT_DIR, d)
    config = json.loads((d / "config.json").read_text())
    if isinstance(change, dict):
        (d / "config.json").write_text(json.dumps({**config, **change}))
    elif change.startswith("DEL "):
        del config[change[4:]]
        (d / "config.json").write_text(json.dumps(config))
    else:
        (d / "config.json").write_text(change)
    return d


def in_process(argv, capsys) -> tuple[int, str]:
    from clozelm.cli import main
    import clozelm.api
    getattr(clozelm.api, "_LOADED", {}).clear()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("change,fragment", BAD_CONFIGS)
def test_a_config_of_the_wrong_shape_or_types_is_one_line_for_every_command(tmp_path, capsys, change, fragment):
    """`info` refuses exactly what `fill` would crash on: whatever reads the config, ModelConfig checks it."""
    d = bad_copy(tmp_path, change)
    (tmp_path / "c.txt").write_text("the cat sat on the mat\n" * 50)
    for argv in (["info", d], ["fill", "the ___ sat.", "--model", d], ["heads", "the cat", "--model", d,
                                                                       "-o", tmp_path / "h.html"],
                 ["convert", d, tmp_path / "out"], ["generate", "the cat", "--model", d],
                 ["train", tmp_path / "c.txt", "--init", d, "--out", tmp_path / "run", "--steps", "1"]):
        code, err = in_process(argv, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("clozelm: error: "), (argv, err)
        assert fragment in lines[0], (argv, lines[0])
    assert not (tmp_path / "out").exists() and not (tmp_path / "h.html").exists()


def test_a_bad_config_in_a_real_process(tmp_path):
    assert_one_line_error(run_cli("info", bad_copy(tmp_path, {"n_embd": "384"})), "n_embd must be an integer")


def test_model_config_checks_every_field():
    from clozelm.model import ModelConfig
    from clozelm.model.config import InvalidConfig
    for bad in [dict(n_embd="384"), dict(n_layer=6.5), dict(n_head=None), dict(layer_norm_eps="abc"),
                dict(layer_norm_eps=float("inf")), dict(dropout=float("nan")), dict(causal=1), dict(extra=[]),
                dict(vocab_size=0), dict(n_inner=-1), dict(n_embd=10**5000), dict(pad_token_id=1.5),
                dict(type_vocab_size=-1), dict(layer_norm_eps=0.0), dict(rope_theta=float("nan"))]:
        with pytest.raises(InvalidConfig, match="invalid model config: " + next(iter(bad))):
            ModelConfig(**bad)
    with pytest.raises(ClozelmError, match="must be an object of settings"):
        ModelConfig.from_dict([1, 2, 3])
    import numpy as np
    cfg = ModelConfig(n_layer=np.int64(2), layer_norm_eps=1)  # numbers of other kinds become the declared type
    assert type(cfg.n_layer) is int and type(cfg.layer_norm_eps) is float


def test_hparams_json_of_the_wrong_types(tmp_path):
    from clozelm.weights.openai_tf import config_from_hparams
    good = {"n_vocab": 50257, "n_ctx": 8, "n_embd": 8, "n_head": 2, "n_layer": 1}
    for content, fragment in [([1], "holds an array"), ({**good, "n_vocab": "5"}, 'n_vocab must be an integer'),
                              ({**good, "n_ctx": None}, "n_ctx must be an integer, got null"),
                              ({k: v for k, v in good.items() if k != "n_layer"}, "it lacks n_layer")]:
        (tmp_path / "hparams.json").write_text(json.dumps(content))
        with pytest.raises(ClozelmError, match=fragment):
            config_from_hparams(tmp_path / "hparams.json")
    (tmp_path / "hparams.json").write_text(json.dumps(good))
    assert config_from_hparams(tmp_path / "hparams.json").eos_token_id == 50256


def test_a_sharded_index_may_not_name_files_outside_its_directory(gpt2_dir, tmp_path):
    d = copy(gpt2_dir, tmp_path / "m")
    (d / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"wte": "../elsewhere.safetensors"}}))
    with pytest.raises(ClozelmError, match="names a shard outside its directory"):
        clozelm.load(d)
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": [1]}))
    with pytest.raises(ClozelmError, match="not a valid safetensors index"):
        clozelm.load(d)


# ---------------------------------------------------------------- issue 18 item 16: pickles

def test_a_pickle_that_asks_to_run_code_is_explained_without_torch_warnings(gpt2_dir, tmp_path):
    d = copy(gpt2_dir, tmp_path / "m")
    (d / "model.safetensors").unlink()
    torch.save({"wte.weight": torch.nn.Linear(2, 2)}, d / "pytorch_model.bin")  # a pickled module: code to run
    r = run_cli("info", d, env={"PYTHONWARNINGS": "default"})
    assert_one_line_error(r, "could not be read as a PyTorch weights file", "asks to run Python code",
                          "clozelm never does", "safe_serialization=True")
    assert "weights_only" not in r.stderr and "Warning" not in r.stderr
    (d / "pytorch_model.bin").write_bytes(b"\x80\x02garbage" * 10)
    assert_one_line_error(run_cli("info", d), "corrupt or truncated")


# ---------------------------------------------------------------- issue 18 items 8, 17: convert writes all or nothing

@pytest.mark.parametrize("stale", ["tokenizer.json", "vocab.txt", "model.safetensors.index.json", "generation_config.json"])
def test_convert_over_another_kind_of_model_leaves_no_file_of_the_old_one(tmp_path, capsys, stale):
    out = tmp_path / "out"
    assert in_process(["convert", "default", out], capsys)[0] == 0
    (out / stale).write_text("{}")  # as another model's converted directory has (a Llama tokenizer, BERT's vocab)
    (out / "notes.txt").write_text("the user's")
    code, err = in_process(["convert", "default", out, "--overwrite"], capsys)
    assert code == 0, err
    assert not (out / stale).exists() and (out / "notes.txt").read_text() == "the user's"
    loaded = clozelm.load(str(out))
    assert loaded.tokenizer.encode("The cat sat.") == clozelm.load("default").tokenizer.encode("The cat sat.")
    weights_only = clozelm.load(str(out), tokenizer=False)  # weights saved beside the directory's own tokenizer
    weights_only.save_pretrained(out, overwrite=True)
    assert clozelm.load(str(out)).tokenizer.encode("The cat sat.") == loaded.tokenizer.encode("The cat sat.")
    (out / stale).mkdir()  # a folder where a stale file would be: refused before anything is written
    before = (out / "model.safetensors").stat().st_mtime_ns
    code, err = in_process(["convert", "default", out, "--overwrite"], capsys)
    assert code == 2 and "is a directory" in err and (out / "model.safetensors").stat().st_mtime_ns == before, err
    other = tmp_path / "other"
    other.mkdir()
    (other / stale).write_text("{}")
    code, err = in_process(["convert", "default", other], capsys)  # none of its own files in the way, only that one
    assert code == 2 and stale in err and "--overwrite" in err, err
    assert [p.name for p in other.iterdir()] == [stale] and (other / stale).read_text() == "{}"


USER_FILES = ["config.json", "model.safetensors", "vocab.json", "merges.txt", "encoder.json", "vocab.bpe",
              "tokenizer_config.json", "special_tokens_map.json"]


@pytest.mark.parametrize("name", USER_FILES)
def test_convert_refuses_before_writing_anything_when_any_file_is_there(tmp_path, capsys, name):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text("the user's own file")
    (out / "notes.txt").write_text("also the user's")
    code, err = in_process(["convert", "default", out], capsys)
    assert code == 2 and "refusing to overwrite" in err and name in err, err
    assert sorted(p.name for p in out.iterdir()) == sorted([name, "notes.txt"])  # no staging folder left either
    assert (out / name).read_text() == "the user's own file"
    code, err = in_process(["convert", "default", out, "--overwrite"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(USER_FILES + ["notes.txt"])
    assert (out / "notes.txt").read_text() == "also the user's"


def test_convert_refuses_to_replace_a_wordpiece_vocabulary(tmp_path, capsys):
    from clozelm.loaded import Model
    from clozelm.model import ModelConfig, Transformer
    from clozelm.tokenizers.wordpiece import WordPiece
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "##s"]
    cfg = ModelConfig(vocab_size=len(tokens), n_positions=8, n_embd=8, n_layer=1, n_head=2, causal=False,
                      pre_ln=False, activation="gelu", head="mlm", type_vocab_size=2)
    Model(Transformer(cfg), WordPiece(tokens)).save_pretrained(tmp_path / "bert")
    assert (tmp_path / "bert" / "vocab.txt").is_file()
    out = tmp_path / "out"
    out.mkdir()
    (out / "vocab.txt").write_text("mine\n")
    code, err = in_process(["convert", tmp_path / "bert", out], capsys)
    assert code == 2 and "vocab.txt" in err and (out / "vocab.txt").read_text() == "mine\n"
    assert [p.name for p in out.iterdir()] == ["vocab.txt"]


def test_a_failed_save_leaves_nothing_behind(tmp_path):
    from clozelm.weights.hf import save_pretrained
    model = clozelm.load(DEFAULT_DIR)

    class BrokenTokenizer:
        def save_pretrained(self, directory):
            (Path(directory) / "vocab.json").write_text("half")
            raise ClozelmError("disk trouble")

    with pytest.raises(ClozelmError, match="disk trouble"):
        save_pretrained(model.network, tmp_path / "a" / "b", tokenizer=BrokenTokenizer())
    assert not (tmp_path / "a").exists()  # the folders it made are gone again
    (tmp_path / "keep").mkdir()
    with pytest.raises(ClozelmError, match="disk trouble"):
        save_pretrained(model.network, tmp_path / "keep", tokenizer=BrokenTokenizer())
    assert list((tmp_path / "keep").iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(ClozelmError, match="file is a file"):
        save_pretrained(model.network, tmp_path / "file" / "sub")


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_saved_files_follow_the_umask(tmp_path, capsys, umask):
    before = os.umask(umask)
    try:
        code, err = in_process(["convert", "default", tmp_path / "out"], capsys)
    finally:
        os.umask(before)
    assert code == 0, err
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir()}
    assert set(modes) == set(USER_FILES) and set(modes.values()) == {0o666 & ~umask}, modes


def test_safetensors_written_by_clozelm_read_back_exactly(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from clozelm.weights.tensors import write_safetensors
    tensors = {"a": torch.randn(3, 4), "b": torch.randn(5).to(torch.bfloat16), "scalar": torch.tensor(3.5),
               "empty": torch.zeros(0, 2), "t": torch.randn(4, 3).t().contiguous(), "mask": torch.tensor([True, False]),
               "ids": torch.arange(5), "half": torch.randn(2, 2).half()}
    write_safetensors(tensors, tmp_path / "x.safetensors", metadata={"format": "pt"})
    back = load_file(tmp_path / "x.safetensors")
    assert set(back) == set(tensors) and all(torch.equal(back[k], tensors[k]) for k in tensors)
    with safe_open(tmp_path / "x.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}


def test_a_tokenizer_is_a_directory_or_an_embedded_models_name(tmp_path, monkeypatch):
    from clozelm.loading import DEFAULTS_DIR, tokenizer_dir
    monkeypatch.chdir(tmp_path)
    assert tokenizer_dir("default") == DEFAULTS_DIR / "default"
    (tmp_path / "default").mkdir()  # a directory of that name, where the user is, is what they mean
    assert tokenizer_dir("default") == Path("default")
    assert tokenizer_dir("no-such-thing") == Path("no-such-thing")  # loading it says it is not found


def test_a_hub_repository_with_only_pickled_weights_is_fetched_with_them(gpt2_dir, tmp_path, monkeypatch):
    """The hub serves what allow_patterns asks for: a repository without safetensors (older GPT-2 and BERT ones)
    needs its pytorch_model.bin asked for too."""
    import fnmatch

    import huggingface_hub
    from safetensors.torch import load_file

    repo = tmp_path / "repo"
    repo.mkdir()
    for f in gpt2_dir.iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, repo / f.name)
    torch.save(load_file(gpt2_dir / "model.safetensors"), repo / "pytorch_model.bin")
    asked = []

    def snapshot_download(repo_id, allow_patterns):
        asked.append(list(allow_patterns))
        got = tmp_path / f"snapshot{len(asked)}"
        got.mkdir()
        for f in repo.iterdir():
            if any(fnmatch.fnmatch(f.name, p) for p in allow_patterns):
                shutil.copy(f, got / f.name)
        return str(got)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    model = clozelm.load("someone/old-gpt2")
    assert len(asked) == 2 and "pytorch_model.bin" not in asked[0] and "pytorch_model.bin" in asked[1]
    ids = torch.tensor([[5, 6, 7]])
    assert torch.equal(model(ids).logits, clozelm.load(gpt2_dir)(ids).logits)


def test_the_device_auto_is_a_gpu_when_there_is_one_except_for_cpu_kernels(monkeypatch):
    from clozelm.loading import resolve_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == resolve_device("cpu").type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert [resolve_device("auto", dtype).type for dtype in ("fp32", "bf16", "int8", "int4")] == ["cuda", "cuda", "cpu", "cpu"]
    with pytest.raises(ClozelmError, match="device must be one of auto, cpu, cuda, not 'gpu'"):
        resolve_device("gpu")


def test_bf16_has_units_on_cpus_that_say_so_and_on_gpus_from_ampere(monkeypatch):
    from clozelm.model import packed
    from clozelm.model.device import has_bf16_units
    for flags, native in (({"avx2", "avx512f", "avx512_bf16"}, True), ({"avx2", "amx_tile", "amx_bf16"}, True),
                          ({"fp", "asimd", "bf16"}, True), ({"avx2", "fma"}, False), ({"avx2", "avx512f"}, False),
                          (set(), False)):
        monkeypatch.setattr(packed, "cpu_flags", lambda flags=flags: frozenset(flags))
        assert has_bf16_units(torch.device("cpu")) is native
    for major, native in ((6, False), (7, False), (8, True), (9, True)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, major=major: (major, 0))
        assert has_bf16_units(torch.device("cuda")) is native


def test_quantized_hf_checkpoints_are_named_not_listed_tensor_by_tensor(gpt2_dir, tmp_path):
    d = copy(gpt2_dir, tmp_path / "m")
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "quantization_config": {"quant_method": "gptq", "bits": 4}}))
    assert_one_line_error(run_cli("info", d), "holds quantized weights (gptq)", "--dtype int8")


def test_sharded_pickles_are_named_with_the_way_to_convert_them(gpt2_dir, tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    shutil.copy(gpt2_dir / "config.json", d / "config.json")
    (d / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"wte.weight": "pytorch_model-1.bin"}}))
    with pytest.raises(ClozelmError, match=r"sharded pickles \(pytorch_model.bin.index.json\).*convert it to safetensors"):
        clozelm.load(d)


def test_a_shard_must_hold_what_the_index_puts_in_it(gpt2_dir, tmp_path):
    """A shard of another version of the model would otherwise swap tensors without a word."""
    from safetensors.torch import load_file, save_file
    d = copy(gpt2_dir, tmp_path / "m")
    state = load_file(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    names = sorted(state)
    half = len(names) // 2
    save_file({k: state[k] for k in names[:half]}, d / "model-00001-of-00002.safetensors")
    save_file({k: state[k] for k in names[half:]}, d / "model-00002-of-00002.safetensors")
    weight_map = {k: f"model-0000{1 if i < half else 2}-of-00002.safetensors" for i, k in enumerate(names)}
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    sharded = clozelm.load(d, tokenizer=False).network.state_dict()
    whole = clozelm.load(gpt2_dir, tokenizer=False).network.state_dict()
    assert sharded.keys() == whole.keys() and all(torch.equal(sharded[k], whole[k]) for k in whole)
    save_file({k: state[k] for k in names[half - 1:]}, d / "model-00002-of-00002.safetensors")  # one tensor twice
    with pytest.raises(ClozelmError, match=f"model-00002-of-00002.safetensors holds {names[half - 1]}, which "
                                           f"model.safetensors.index.json puts in model-00001-of-00002.safetensors"):
        clozelm.load(d)
    save_file({k: state[k] for k in names[half + 1:]}, d / "model-00002-of-00002.safetensors")  # one missing
    with pytest.raises(ClozelmError, match=f"lacks {names[half]}, which model.safetensors.index.json puts there"):
        clozelm.load(d)


@pytest.mark.parametrize("activation", ["gelu_fast", "gelu_pytorch_tanh"])
def test_the_tanh_gelu_under_all_its_names(gpt2_dir, tmp_path, activation):
    d = copy(gpt2_dir, tmp_path / "m")
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "activation_function": activation}))
    hf = transformers.GPT2LMHeadModel.from_pretrained(d).eval()
    ids = torch.randint(0, 120, (1, 16))
    with torch.no_grad():
        assert (clozelm.load(d, tokenizer=False)(ids).logits - hf(ids).logits).abs().max() <= 1e-5


@pytest.mark.parametrize("full_layers,context", [(None, 128), (2, 128), (1, 64), (0, 64)])
def test_qwen2_caps_its_context_only_where_a_layer_slides_its_window(full_layers, context):
    from clozelm.weights.hf import llama_config_from_hf
    d = {"model_type": "qwen2", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "max_position_embeddings": 128, "use_sliding_window": True, "sliding_window": 64}
    if full_layers is not None:
        d["max_window_layers"] = full_layers
    assert llama_config_from_hf(d).n_positions == context


def test_gpt2_weights_load_as_contiguous_parameters(gpt2_dir):
    """GPT-2's Conv1D matrices are stored transposed: loaded as views they would be strided parameters, slower in
    every kernel that wants rows (and in fused optimizers)."""
    network = clozelm.load(gpt2_dir, tokenizer=False).network
    assert all(p.is_contiguous() for p in network.parameters())
