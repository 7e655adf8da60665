"""The fast training paths give the plain path's results: the fused loss (exactly, up to float rounding, in
fp32) and bf16 weights with fp32 masters (within bf16's rounding of autocast)."""

import copy

import pytest
import torch
from safetensors.torch import load_file

from clozelm.model import ModelConfig, Transformer, native
from clozelm.training.precision import MasterWeights

from .helpers import TINY, assert_same_losses_and_weights, cli, losses


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_fused_loss_gives_the_plain_losses_and_weights_in_fp32(tmp_path, corpus, bpe_dir, capsys, objective):
    common = [corpus, "--tokenizer", bpe_dir, *TINY, "--steps", "8", "--precision", "fp32", "--seed", "3",
              "--objective", objective, "--eval-every", "4"]
    assert cli([*common, "--out", tmp_path / "plain", "--no-fused-loss"], capsys)[0] == 0
    assert cli([*common, "--out", tmp_path / "fused", "--fused-loss"], capsys)[0] == 0
    assert_same_losses_and_weights(tmp_path / "plain", tmp_path / "fused", steps=8)


def test_bf16_master_weights_follow_autocast(tmp_path, corpus, bpe_dir, capsys):
    common = [corpus, "--tokenizer", bpe_dir, *TINY, "--steps", "30", "--lr", "3e-3", "--seed", "5"]
    assert cli([*common, "--out", tmp_path / "autocast", "--precision", "bf16", "--no-fused-loss"], capsys)[0] == 0
    assert cli([*common, "--out", tmp_path / "master", "--precision", "bf16-master"], capsys)[0] == 0
    a, b = losses(tmp_path / "autocast"), losses(tmp_path / "master")
    assert a[1] == pytest.approx(b[1], rel=1e-2)
    assert b[30] == pytest.approx(a[30], rel=0.03)  # the fast path learns as fast as autocast
    assert b[30] < 0.75 * b[1]
    saved = load_file(tmp_path / "master" / "model" / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in saved.values())  # the masters are saved, not their bf16 copies


def test_master_weights_round_trip_and_update_in_fp32():
    torch.manual_seed(0)
    net = Transformer(ModelConfig(vocab_size=50, n_positions=8, n_embd=16, n_layer=1, n_head=2))
    full = {k: v.clone() for k, v in net.state_dict().items()}
    masters = MasterWeights(net)
    assert all(p.dtype == torch.bfloat16 for p in net.parameters())
    assert all(torch.equal(masters.state_dict()[k], full[k]) for k in full)  # nothing lost to bf16
    opt = torch.optim.AdamW(masters.master_groups([{"params": list(net.parameters())}]), lr=1e-3)
    net(torch.tensor([[1, 2, 3]])).logits.float().sum().backward()
    masters.grads_to_masters()
    assert all(p.grad is None for p in net.parameters())
    assert all(m.grad.dtype == torch.float32 for m in masters.masters)
    opt.step()
    masters.masters_to_model()
    for p, m in zip(net.parameters(), masters.masters):
        assert torch.equal(p, m.to(torch.bfloat16))
    # An update smaller than bf16's resolution survives in the master.
    assert any(not torch.equal(m, full[n]) for n, m in zip(masters.names, masters.masters))


def test_micro_batch_gradients_sum_in_fp32():
    """Gradient accumulation: each micro-batch's bf16 gradient is added into the fp32 master, not into a bf16 sum
    that rounds at every micro-batch."""
    torch.manual_seed(0)
    net = Transformer(ModelConfig(vocab_size=50, n_positions=8, n_embd=16, n_layer=1, n_head=2))
    masters = MasterWeights(net)
    expected = [torch.zeros_like(m) for m in masters.masters]
    for _ in range(16):
        net(torch.randint(0, 50, (2, 6))).logits.float().sum().backward()
        for total, p in zip(expected, net.parameters()):
            total += p.grad.float()
        masters.grads_to_masters()
        assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(m.grad, total) for m, total in zip(masters.masters, expected))


def test_new_runs_train_in_fp32_on_gpus_without_bf16_matrix_units(monkeypatch, capsys):
    """bf16 with fp32 masters by default, but fp32 on a CUDA GPU older than Ampere (torch emulates bf16 products
    there), with a note; a precision the run asks for is kept."""
    from clozelm.model import ModelConfig, packed
    from clozelm.training.config import TrainConfig
    from clozelm.training.distributed import Dist
    from clozelm.training.precision import default_precision
    from clozelm.training.runner import _new_run_config

    capability = {"major": 7}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (capability["major"], 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    gpu = Dist(device=torch.device("cuda"))
    model = ModelConfig(vocab_size=64, n_positions=32, n_embd=32, n_layer=1, n_head=2, extra={"objective": "clm"})
    monkeypatch.setattr(packed, "has_bf16_units", lambda: True)  # a CPU with AMX or AVX-512 BF16
    assert default_precision(torch.device("cpu")) == "bf16-master"
    assert default_precision(gpu.device) == "fp32"
    assert _new_run_config(TrainConfig(), model, False, gpu).precision == "fp32"
    assert "Tesla T4 has no bf16 units" in capsys.readouterr().err
    assert _new_run_config(TrainConfig(precision="bf16-master"), model, False, gpu).precision == "bf16-master"
    assert capsys.readouterr().err == ""
    capability["major"] = 8  # Ampere and later
    assert _new_run_config(TrainConfig(), model, False, gpu).precision == "bf16-master"
    assert _new_run_config(TrainConfig(), model, False, Dist()).precision == "bf16-master"


def test_new_runs_train_in_fp32_on_cpus_without_bf16_units(monkeypatch, capsys):
    """An x86 CPU with AVX2 only (or AVX-512 without BF16) emulates bf16 products, several times slower than fp32:
    new runs train in fp32 there, with a note; one that asks for bf16 keeps it."""
    from clozelm.model import ModelConfig, packed
    from clozelm.training.config import TrainConfig
    from clozelm.training.distributed import Dist
    from clozelm.training.runner import _new_run_config

    model = ModelConfig(vocab_size=64, n_positions=32, n_embd=32, n_layer=1, n_head=2, extra={"objective": "clm"})
    monkeypatch.setattr(packed, "cpu_flags", lambda: frozenset({"avx2", "fma", "avx512f"}))
    assert _new_run_config(TrainConfig(), model, False, Dist()).precision == "fp32"
    assert "training in fp32 (this CPU has no bf16 units" in capsys.readouterr().err
    assert _new_run_config(TrainConfig(precision="bf16"), model, False, Dist()).precision == "bf16"
    assert capsys.readouterr().err == ""
    for units in ("avx512_bf16", "amx_bf16", "bf16"):  # AMD Zen 4, Intel Xeon with AMX, Arm with the BF16 extension
        monkeypatch.setattr(packed, "cpu_flags", lambda units=units: frozenset({"avx2", units}))
        assert _new_run_config(TrainConfig(), model, False, Dist()).precision == "bf16-master"


NATIVE = native.usable()  # native.c's step runs on this CPU (x86 with AVX2 and FMA)


def _two_runs(micro_batches: int, max_norm: float, steps: int = 1, weight_decay: float = 0.1):
    """The same network stepped by MasterWeights through native.c and through torch's path: (masters, optimizer,
    network, gradient norms) of each."""
    torch.manual_seed(0)
    base = Transformer(ModelConfig(vocab_size=61, n_positions=16, n_embd=24, n_layer=2, n_head=2, dropout=0.0))
    runs = []
    for native in (True, False):
        net = copy.deepcopy(base)
        masters = MasterWeights(net)
        groups = [{"params": [p for p in net.parameters() if p.dim() == 2], "weight_decay": weight_decay},
                  {"params": [p for p in net.parameters() if p.dim() < 2], "weight_decay": 0.0}]
        opt = torch.optim.AdamW(masters.master_groups(groups), lr=1e-2, betas=(0.9, 0.95), eps=1e-8, fused=True)
        if not native:
            masters._native = lambda: False
        norms = []
        for step in range(steps):
            for m in range(micro_batches):
                x = torch.randint(0, 61, (3, 9), generator=torch.Generator().manual_seed(10 * step + m))
                net(x).logits.float().logsumexp(-1).sum().backward()
                if m < micro_batches - 1:
                    masters.grads_to_masters()
            norms.append(masters.clip_grad_norm(max_norm))
            masters.step(opt)
        runs.append((masters, opt, net, norms))
    return runs


@pytest.mark.skipif(not NATIVE, reason="native.c's kernels do not run on this CPU")
@pytest.mark.parametrize("micro_batches", [1, 3])  # the network's bf16 gradients alone; with fp32 sums before them
@pytest.mark.parametrize("max_norm", [0.05, float("inf")])  # clipped; not
def test_the_native_step_is_torchs_clipping_and_adamw(micro_batches, max_norm):
    (a, opt_a, net_a, norms_a), (b, opt_b, net_b, norms_b) = _two_runs(micro_batches, max_norm)
    assert float(norms_a[0]) == pytest.approx(float(norms_b[0]), rel=1e-6)
    for m, n in zip(a.masters, b.masters):
        # torch's fused AdamW and native.c's round the same fp32 formulas in a different order: an ulp or so
        assert torch.allclose(m, n, rtol=4e-7, atol=1e-8)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.allclose(opt_a.state[m][key], opt_b.state[n][key], rtol=1e-6, atol=1e-12)
    for p, m in zip(net_a.parameters(), a.masters):
        assert torch.equal(p.detach(), m.detach().to(torch.bfloat16))  # the network holds its masters, rounded
    assert all(p.grad is None for p in net_a.parameters()) and all(m.grad is None for m in a.masters)


@pytest.mark.skipif(not NATIVE, reason="native.c's kernels do not run on this CPU")
def test_native_steps_train_as_torchs_do():
    """Several steps: the same gradient norms, and masters that stay together: bf16 weights that round differently in
    their last place make runs drift apart slowly, and where a gradient is near zero Adam's step of about lr may
    turn the other way, so a few numbers move apart by a few lr; on average they stay a hundredth of an lr apart."""
    (a, _, _, norms_a), (b, _, _, norms_b) = _two_runs(1, 1.0, steps=6)
    assert [float(x) for x in norms_a] == pytest.approx([float(x) for x in norms_b], rel=1e-3)
    apart = torch.cat([(m - n).detach().abs().flatten() for m, n in zip(a.masters, b.masters)])
    assert float(apart.mean()) < 1e-2 / 100 and float((apart > 1e-2 / 10).float().mean()) < 0.01


@pytest.mark.skipif(not NATIVE, reason="native.c's kernels do not run on this CPU")
def test_the_native_step_moves_the_weights_version_counters():
    """Inference copies of the weights (model/packed.py) know from the version counters that they are stale."""
    (a, _, net, _), _ = _two_runs(1, 1.0)
    before = [p._version for p in net.parameters()]
    net(torch.tensor([[1, 2, 3]])).logits.float().sum().backward()
    a.clip_grad_norm(1.0)
    a.step(torch.optim.AdamW(a.masters, lr=1e-3))
    assert all(p._version > v for p, v in zip(net.parameters(), before))


@pytest.mark.skipif(not NATIVE, reason="native.c's kernels do not run on this CPU")
def test_the_gradient_norm_of_millions_of_numbers_is_float64s():
    """native.c sums the squares in fp32 lanes over blocks and the blocks in double: over millions of numbers one
    fp32 sum would drop the small squares (a heavy-tailed gradient's norm came out 0.5% low)."""
    net = torch.nn.Linear(2000, 3000, bias=False)
    masters = MasterWeights(net)
    g = torch.Generator().manual_seed(0)
    net.weight.grad = (torch.randn(3000, 2000, generator=g) ** 3).to(torch.bfloat16)
    exact = float(net.weight.grad.double().norm())
    assert float(masters.clip_grad_norm(1.0)) == pytest.approx(exact, rel=1e-6)


@pytest.mark.skipif(not NATIVE, reason="native.c's kernels do not run on this CPU")
def test_a_parameter_outside_the_optimizer_keeps_torchs_path():
    """A gradient on a parameter the optimizer does not hold: torch's AdamW leaves it alone, and so does the step."""
    torch.manual_seed(0)
    net = Transformer(ModelConfig(vocab_size=50, n_positions=8, n_embd=16, n_layer=1, n_head=2))
    masters = MasterWeights(net)
    held = [m for n, m in zip(masters.names, masters.masters) if n != "wpe.weight"]
    opt = torch.optim.AdamW(held, lr=1e-3)
    before = masters.masters[masters.names.index("wpe.weight")].detach().clone()
    net(torch.tensor([[1, 2, 3]])).logits.float().sum().backward()
    masters.clip_grad_norm(1.0)
    masters.step(opt)
    assert torch.equal(masters.masters[masters.names.index("wpe.weight")].detach(), before)
    assert all(p.grad is None for p in net.parameters())
