"""Training throughput: clozelm's default `clozelm train` step vs transformers' GPT2LMHeadModel in fp32,
and the step time as a fraction of this machine's matrix-product limit.

One optimizer step = forward + backward + gradient clipping + AdamW, on the same batches for both sides,
each side in a process of its own, stepped in turn (A B, B A, ...) so slow phases of a shared machine hit
both alike. Both models start from
the same weights (transformers' random init, copied into clozelm through save_pretrained + clozelm.load),
use the same dropout, the same AdamW hyperparameters and decay groups, and the same learning-rate warm-up;
after the loss-check steps their losses must agree within 1%.

    clozelm    the trainer's default step: bf16 weights with fp32 master copies where the CPU has bf16 units
               (fp32 where it has not: an AVX2-only CPU emulates bf16), each Linear layer's bias and GELU inside
               oneDNN's product (CLOZELM_FUSED_LINEAR=0: apart), the vocabulary projection fused into the
               cross-entropy, clipping and AdamW in one pass each over the masters, on x86 CPUs the loss rows,
               GELU's backward, LayerNorm and the optimizer through clozelm's C kernels (CLOZELM_NATIVE_KERNELS=0:
               torch's), and torch.compile where a long `clozelm train` run on this machine uses it
               (--precision / --no-fused-loss / --no-compile: the other paths)
    reference  transformers GPT2LMHeadModel, fp32, torch AdamW with its default implementation

Each side runs with its own process settings: clozelm's as `clozelm train` sets them (it keeps freed memory
for the next step, training/memory.py; --no-reuse-memory: the C library's default), transformers' as a
script of its own runs (the C library's default; --reference-reuse-memory gives it clozelm's setting too,
from which it gains as well).

The limit: the step's matrix products (every Linear layer and the output projection, forward and both
backward products, and the causal attention products) timed alone at the step's own shapes on this machine in
the same run, in bf16 where the CPU has bf16 units and in fp32 where it has not (bf16 products are emulated there,
tens of times slower); "fraction of the limit" = that time / the measured step time. The products are timed with
clozelm train's memory setting (training/memory.py): with the C library's, each large output lands on fresh pages
the kernel clears first, which is not the products' time (the 124M vocabulary projection's took twice as long).

Shapes: "default" = 6 layers x 384, 6 heads, vocab 8192, seq 256, batch 16 (the embedded default model);
"124M" = GPT-2 small (12 x 768, vocab 50257), seq 256, batch 8. Tokens come from the embedded default
tokenizer over data/corpus when present (else random ids).

    python benchmarks/train_speed.py            # both shapes; 50 loss-check steps on the default shape
    python benchmarks/train_speed.py --quick    # a short run (half batches, 8 steps; 124M timed on 3)
    python benchmarks/train_speed.py --no-compile  # clozelm's step eager where a long run would compile it
    python benchmarks/train_speed.py --mfu cuda --batch 64   # on a GPU: clozelm's step alone, tokens/s and MFU
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import clozelm
from clozelm.model import Transformer, packed
from clozelm.training import TrainConfig
from clozelm.training.loop import autocast, fused_loss_sum, lr_at, make_optimizer
from clozelm.training.memory import reuse_freed_memory
from clozelm.training.numerics import COMPILE_FROM_STEPS, compile_by_default
from clozelm.training.objectives import loss_sum
from clozelm.training.precision import MasterWeights, default_precision

SHAPES = {
    "default": dict(n_layer=6, n_embd=384, n_head=6, vocab_size=8192, seq=256, batch=16),
    "124M": dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, seq=256, batch=8),
}
ROOT = Path(__file__).resolve().parents[1]


def token_stream(n_tokens: int, vocab: int, seed: int = 0) -> np.ndarray:
    corpus = ROOT / "data" / "corpus" / "train"
    files = sorted(corpus.glob("*.txt")) if corpus.is_dir() else []
    if files:
        tok = clozelm.load("default").tokenizer
        ids = []
        for f in files:
            text = f.read_text(encoding="utf-8")[: n_tokens * 6 // len(files) + 1000]
            ids += tok.encode(text) + [tok.eos_id]
        if len(ids) >= n_tokens:
            return np.array(ids[:n_tokens]) % vocab
    return np.random.default_rng(seed).integers(0, vocab, n_tokens)


def save_reference(shape: dict, dropout: float, directory: str) -> None:
    """transformers' randomly initialised GPT2LMHeadModel of `shape`, saved in `directory`: both sides start from it."""
    import transformers
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=shape["vocab_size"], n_positions=max(1024, shape["seq"]),
                                  n_embd=shape["n_embd"], n_layer=shape["n_layer"], n_head=shape["n_head"],
                                  resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(directory)


def clozelm_model(directory: str, dropout: float) -> Transformer:
    loaded = clozelm.load(directory, tokenizer=False)
    assert loaded.config.dropout == dropout
    # As `clozelm train --init` builds its model: a fresh network that the loaded weights are copied into, laid
    # out contiguously (loading reads GPT-2's [in, out] projections as transposed views, which a training step
    # would copy to contiguous memory inside the fused optimizer at every step).
    ours = Transformer(loaded.config)
    ours.load_state_dict(loaded.network.state_dict())
    return ours


def hf_optimizer(hf, cfg: TrainConfig):
    decay = [p for n, p in hf.named_parameters() if p.dim() >= 2 and "wte" not in n and "wpe" not in n]
    other = [p for n, p in hf.named_parameters() if not (p.dim() >= 2 and "wte" not in n and "wpe" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps)


class _Clm:  # the trainer's view of the clm objective: every position labelled
    sparse_labels = False


def clozelm_step(forward, network, opt, masters, params, cfg: TrainConfig, i: int, x, y, precision: str,
                 fused: bool) -> torch.Tensor:
    """One optimizer step of `clozelm train`'s default path: forward, loss, backward, clipping, AdamW (on the
    fp32 masters under bf16-master). Returns the mean loss."""
    for g in opt.param_groups:
        g["lr"] = lr_at(cfg, i)
    if fused:
        s = fused_loss_sum(forward, network, _Clm, x, y, precision)
    else:
        with autocast(precision, x.device):
            s, _ = loss_sum(forward(x).logits, y)
    loss = s / y.numel()
    loss.backward()
    if masters is not None:
        masters.clip_grad_norm(cfg.grad_clip)
        masters.step(opt)
    else:
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return loss.detach()


def _side(side: str, conn, directory: str, shape: dict, dropout: float, cfg: TrainConfig, batches: torch.Tensor,
          threads: int, reuse_memory: bool, compile: bool, precision: str, fused: bool) -> None:
    """One side of the comparison in a process of its own: build the model, then run step i whenever the parent
    sends i, answering (loss, seconds); None ends it."""
    torch.set_num_threads(threads)
    if reuse_memory:
        reuse_freed_memory()
    torch.manual_seed(0)
    if side == "clozelm":
        ours = clozelm_model(directory, dropout).train()
        masters = MasterWeights(ours) if precision == "bf16-master" else None
        opt = make_optimizer(ours, cfg, masters=masters)
        params = masters.masters if masters is not None else list(ours.parameters())
        forward = torch.compile(ours) if compile else ours

        def step(i, w):
            return clozelm_step(forward, ours, opt, masters, params, cfg, i, w[:, :-1], w[:, 1:], precision,
                                fused).item()
    else:
        import transformers
        hf = transformers.GPT2LMHeadModel.from_pretrained(directory).train()
        hf_opt = hf_optimizer(hf, cfg)

        def step(i, w):
            for g in hf_opt.param_groups:
                g["lr"] = lr_at(cfg, i)
            x, y = w[:, :-1], w[:, 1:]
            logits = hf(input_ids=x).logits
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(hf.parameters(), cfg.grad_clip)
            hf_opt.step()
            hf_opt.zero_grad(set_to_none=True)
            return loss.item()
    conn.send("ready")
    while (i := conn.recv()) is not None:
        t0 = time.perf_counter()
        loss = step(i, batches[i])
        conn.send((loss, time.perf_counter() - t0))


def run_shape(name: str, shape: dict, loss_steps: int, timed_steps: int, dropout: float, compile: bool,
              precision: str, fused: bool, reuse_memory: bool, reference_reuse_memory: bool):
    """Both sides, each in its own process (so each runs with its own process settings: clozelm train's memory
    reuse, the C library's default for a transformers script), stepped in turn: A B, B A, ..."""
    cfg = TrainConfig(lr=6e-4, warmup=5, steps=max(loss_steps, timed_steps) + 1, grad_clip=1.0,
                      precision=precision, fused_loss=fused).with_defaults("recipe")
    B, T = shape["batch"], shape["seq"]
    n_steps = max(loss_steps, timed_steps)
    stream = token_stream(n_steps * B * (T + 1) + 1, shape["vocab_size"])
    batches = torch.from_numpy(stream[: n_steps * B * (T + 1)].reshape(n_steps, B, T + 1)).long()
    context = mp.get_context("spawn")
    sides = {}
    with tempfile.TemporaryDirectory() as directory:
        save_reference(shape, dropout, directory)
        for side, reuse in (("clozelm", reuse_memory), ("transformers", reference_reuse_memory)):
            parent, child = context.Pipe()
            proc = context.Process(target=_side, args=(side, child, directory, shape, dropout, cfg, batches,
                                                       torch.get_num_threads(), reuse, compile, precision, fused),
                                   daemon=True)  # a side left behind by an error dies with this process
            proc.start()
            sides[side] = (parent, proc)
        for side, (conn, _) in sides.items():  # both built before the model files go away
            try:
                ready = conn.poll(600) and conn.recv() == "ready"
            except EOFError:  # it died; its traceback is on stderr
                ready = False
            if not ready:
                raise SystemExit(f"the {side} process did not start")
    times = {"clozelm": [], "transformers": []}
    losses = {"clozelm": [], "transformers": []}
    try:
        for i in range(n_steps):
            order = ["clozelm", "transformers"]
            if i % 2:
                order.reverse()  # A B, B A, ...: neither side always runs right after the other
            for side in order:
                conn = sides[side][0]
                conn.send(i)
                loss, seconds = conn.recv()
                losses[side].append(loss)
                times[side].append(seconds)
            print(f"  {name} step {i + 1}/{n_steps}: clozelm {losses['clozelm'][-1]:.4f} ({times['clozelm'][-1]:.2f}s)  "
                  f"transformers {losses['transformers'][-1]:.4f} ({times['transformers'][-1]:.2f}s)", flush=True)
    except EOFError:
        raise SystemExit("a side's process died; its traceback is above") from None
    finally:
        for conn, proc in sides.values():
            try:
                conn.send(None)
                proc.join(30)
            except (BrokenPipeError, OSError):
                pass
            if proc.is_alive():
                proc.terminate()
    tokens = B * T
    skip = 1 if n_steps > 2 else 0  # the first step pays one-time costs (allocation, compilation)
    step_time = {side: statistics.median(t[skip:]) for side, t in times.items()}
    rate = {side: tokens / t for side, t in step_time.items()}
    limit = matmul_limit(shape)
    print(f"{name}: clozelm {rate['clozelm']:,.0f} tok/s, transformers fp32 {rate['transformers']:,.0f} tok/s, "
          f"ratio x{rate['clozelm'] / rate['transformers']:.2f} (batch {B} x {T}, dropout {dropout}, "
          f"{precision}, fused loss {'on' if fused else 'off'})")
    if compile:
        print(f"{name}: clozelm's first step, compilation included, took {times['clozelm'][0]:.1f}s (not counted)")
    print(f"{name}: the step's matrix products alone take {limit:.2f}s in {LIMIT_DTYPE} here: clozelm's step "
          f"({step_time['clozelm']:.2f}s) is {limit / step_time['clozelm']:.0%} of that limit")
    if loss_steps:
        a, b = losses["clozelm"][loss_steps - 1], losses["transformers"][loss_steps - 1]
        rel = abs(a - b) / b
        print(f"{name}: loss after {loss_steps} steps: clozelm {a:.4f}, transformers {b:.4f}, "
              f"relative difference {rel:.2%} ({'OK' if rel < 0.01 else 'MORE THAN 1%'})")
    return rate


# The matrix products' fastest dtype here: bf16 on CPUs with bf16 units, fp32 where bf16 is emulated.
LIMIT_DTYPE = "bf16" if packed.has_bf16_units() else "fp32"


def step_products(shape: dict) -> list[tuple[tuple[int, int], tuple[int, int], int]]:
    """One training step's matrix products (forward, gradient of the input, gradient of the weight of every
    Linear layer and of the output projection) as (a shape, b shape, how many per step)."""
    B, T, D, V, L = shape["batch"], shape["seq"], shape["n_embd"], shape["vocab_size"], shape["n_layer"]
    N = B * T
    products = []
    for k, m in [(D, 3 * D), (D, D), (D, 4 * D), (4 * D, D)]:
        products += [((N, k), (k, m), L), ((N, m), (m, k), L), ((m, N), (N, k), L)]
    return products + [((N, D), (D, V), 1), ((N, V), (V, D), 1), ((V, N), (N, D), 1)]


def step_flops(shape: dict) -> float:
    """Model FLOPs of one training step: the products of step_products, and causal attention's six products
    (scores and weighted values forward, four backward) with the half above the diagonal skipped."""
    B, T, D, L = shape["batch"], shape["seq"], shape["n_embd"], shape["n_layer"]
    dense = sum(2 * a[0] * a[1] * b[1] * count for a, b, count in step_products(shape))
    return dense + 6 * 2 * B * T * T * D / 2 * L


def matmul_limit(shape: dict, reps: int = 3) -> float:
    """Seconds this machine needs for one step's matrix products, each timed alone at its shape (forward, gradient
    of the input, gradient of the weight) in LIMIT_DTYPE, best of `reps`."""
    B, T, D, L, H = shape["batch"], shape["seq"], shape["n_embd"], shape["n_layer"], shape["n_head"]
    products = step_products(shape)
    total = 0.0
    dtype = torch.bfloat16 if LIMIT_DTYPE == "bf16" else torch.float32
    for a_shape, b_shape, count in products:
        a, b = torch.randn(a_shape, dtype=dtype), torch.randn(b_shape, dtype=dtype)
        a @ b
        best = min(_timed(lambda: a @ b) for _ in range(reps))
        total += best * count
    # Causal attention: scores and weighted values forward, four products backward, half of each skipped.
    q = torch.randn(B * H, T, D // H, dtype=dtype)
    best = min(_timed(lambda: torch.bmm(q, q.transpose(1, 2))) for _ in range(reps))
    total += best * 6 / 2 * L
    return total


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def matmul_ceiling(n: int = 1024, reps: int = 6) -> float:
    """This CPU's bf16 / fp32 matrix-product speed ratio (n x n x n, interleaved medians). A training step is
    mostly matrix products, so the clozelm / transformers-fp32 ratio cannot go much beyond it: ~7x with AMX
    tiles, ~2x with AVX-512 BF16 alone."""
    a32, b32 = torch.randn(n, n), torch.randn(n, n)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    times = {torch.float32: [], torch.bfloat16: []}
    for _ in range(reps):
        for (a, b) in ((a32, b32), (a16, b16)):
            a @ b  # warm
            t0 = time.perf_counter()
            for _ in range(4):
                a @ b
            times[a.dtype].append(time.perf_counter() - t0)
    fp32, bf16 = statistics.median(times[torch.float32]), statistics.median(times[torch.bfloat16])
    flops = 4 * 2 * n ** 3
    print(f"matmul {n}^3: fp32 {flops / fp32 / 1e9:,.0f} GFLOP/s, bf16 {flops / bf16 / 1e9:,.0f} GFLOP/s, "
          f"bf16/fp32 x{fp32 / bf16:.2f} (the ceiling for the training ratios below: x{max(1.0, fp32 / bf16):.2f})")
    return fp32 / bf16


def peak_matmul_rate(device: torch.device, n: int = 8192, reps: int = 5) -> float:
    """FLOP/s of the device's bf16 matrix product at n x n x n, best of `reps`: the denominator of MFU,
    measured rather than taken from a data sheet."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    best = float("inf")
    for _ in range(reps + 1):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_mfu(name: str, shape: dict, steps: int, precision: str, fused: bool, compile: bool, device: torch.device):
    """clozelm's training step on `device` (a GPU: placement, bf16, fused AdamW, the fused loss), timed over
    `steps` after one warm-up step: tokens/s, and model FLOP utilisation = the step's model FLOPs (step_flops)
    per second over the device's measured bf16 matrix-product rate."""
    cfg = TrainConfig(lr=6e-4, warmup=5, steps=steps + 2, grad_clip=1.0, precision=precision,
                      fused_loss=fused).with_defaults("recipe")
    from clozelm.model import ModelConfig  # built here: transformers need not be installed

    torch.manual_seed(0)
    ours = Transformer(ModelConfig(vocab_size=shape["vocab_size"], n_positions=max(1024, shape["seq"]),
                                   n_embd=shape["n_embd"], n_layer=shape["n_layer"], n_head=shape["n_head"],
                                   dropout=0.0)).to(device).train()
    masters = MasterWeights(ours) if precision == "bf16-master" else None
    opt = make_optimizer(ours, cfg, masters=masters)
    params = masters.masters if masters is not None else list(ours.parameters())
    forward = torch.compile(ours) if compile else ours
    B, T = shape["batch"], shape["seq"]
    stream = token_stream((steps + 1) * B * (T + 1), shape["vocab_size"])
    batches = torch.from_numpy(stream.reshape(steps + 1, B, T + 1)).long().to(device)
    times, loss = [], None
    for i in range(steps + 1):
        x, y = batches[i, :, :-1], batches[i, :, 1:]
        _sync(device)
        t0 = time.perf_counter()
        loss = float(clozelm_step(forward, ours, opt, masters, params, cfg, i, x, y, precision, fused))
        _sync(device)
        if i:  # the first step pays one-time costs (allocation, compilation)
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    peak = peak_matmul_rate(device)
    achieved = step_flops(shape) / step
    print(f"{name} on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}): "
          f"{B * T / step:,.0f} tok/s, {step * 1e3:.1f} ms/step, loss {loss:.3f} after {steps + 1} steps; "
          f"{achieved / 1e12:.1f} TFLOP/s of model FLOPs; a large bf16 matrix product runs at {peak / 1e12:.1f} "
          f"TFLOP/s here: MFU {achieved / peak:.0%} of that measured peak (a data sheet's peak is higher)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short run: half batches, 8 loss-check steps, 124M timed on 3 steps")
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--dropout", type=float, default=0.0, help="on both sides (default 0, clozelm train's default)")
    ap.add_argument("--precision", choices=["bf16-master", "bf16", "fp32"],
                    help="clozelm's precision (default: a new `clozelm train` run's on the device)")
    ap.add_argument("--no-fused-loss", dest="fused", action="store_false")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile clozelm's model (default: as a long `clozelm train` run on this machine "
                         "does, training.numerics.compile_by_default)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-reuse-memory", dest="reuse_memory", action="store_false",
                    help="clozelm's side with malloc as the C library sets it (clozelm train --no-reuse-memory)")
    ap.add_argument("--reference-reuse-memory", action="store_true",
                    help="transformers' side with clozelm train's memory reuse too (it gains from it as well)")
    ap.add_argument("--batch", type=int, help="sequences per step (default: 16 for default, 8 for 124M; half with --quick)")
    ap.add_argument("--loss-steps", type=int, help="steps before comparing losses on the default shape (default 50; 8 with --quick)")
    ap.add_argument("--mfu", metavar="DEVICE", help="instead: clozelm's step alone on DEVICE (cuda, cuda:1, cpu) "
                    "and its model FLOP utilisation against the device's measured bf16 matrix-product rate")
    ap.add_argument("--steps", type=int, default=20, help="timed steps with --mfu (default 20)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    args.precision = args.precision or default_precision(torch.device(args.mfu or "cpu"))
    if args.mfu:
        for name in args.shapes:
            shape = dict(SHAPES[name], **({"batch": args.batch} if args.batch else {}))
            run_mfu(name, shape, args.steps, args.precision, args.fused, args.compile, torch.device(args.mfu))
        return
    reuse_freed_memory()  # this process times the limit's products: see the module's text
    matmul_ceiling()
    if args.compile is None:
        args.compile = compile_by_default("cpu", COMPILE_FROM_STEPS, 1)
        print(f"clozelm's step {'compiled' if args.compile else 'eager'}: what `clozelm train` does here for runs of "
              f"{COMPILE_FROM_STEPS:,} steps or more (--compile / --no-compile to choose)")
    for name in args.shapes:
        shape = dict(SHAPES[name])
        if args.quick:  # half the batch: a minute or two on a shared 2-core machine
            shape["batch"] //= 2
        if args.batch:
            shape["batch"] = args.batch
        if name == "default":
            loss_steps = args.loss_steps or (8 if args.quick else 50)
            steps = (loss_steps, loss_steps)
        else:
            steps = (0, 3 if args.quick else 5)
        run_shape(name, shape, *steps, args.dropout, args.compile, args.precision, args.fused, args.reuse_memory,
                  args.reference_reuse_memory)


if __name__ == "__main__":
    main()
