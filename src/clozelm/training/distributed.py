"""Distributed data parallel: the process group torchrun describes (gloo on CPU, NCCL on GPU), the sums the
loop needs across ranks, and running set-up work on rank 0 alone without leaving the others waiting forever
when it fails."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


# How long a rank waits in a collective before it gives up (set-up included: see init_distributed).
COLLECTIVE_TIMEOUT = timedelta(hours=2)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this process group was started here, so it is ended here

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            t = t.to(self.device)
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is True on any."""
        return bool(self.all_sum(torch.tensor(1.0 if flag else 0.0)) > 0)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str) -> Dist:
    """Join the process group torchrun describes in the environment; one process without torchrun.
    `device` is "cpu" or "cuda" (already resolved)."""
    use_cuda = device == "cuda"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=torch.device("cuda") if use_cuda else torch.device("cpu"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
    started = not dist.is_initialized()
    if started:
        # The other ranks wait in a collective while rank 0 tokenizes the corpus (runner.on_main), which takes
        # longer than NCCL's default 10-minute watchdog on a large corpus.
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=COLLECTIVE_TIMEOUT,
                                device_id=torch.device("cuda", local) if use_cuda else None)
    return Dist(dist.get_rank(), dist.get_world_size(), torch.device("cuda", local) if use_cuda else torch.device("cpu"),
                owns_group=started)


def fp32_mean_hook(process_group, bucket):
    """DDP communication hook: the ranks' mean of a bucket of gradients, summed in fp32 whatever their dtype. With
    bf16 weights (bf16-master) the default hook sums bf16 gradients, rounding at each rank's addition; here they
    are rounded once, like the gradient of one process with the whole batch."""
    group = process_group if process_group is not None else dist.group.WORLD
    buffer = bucket.buffer()
    full = buffer.to(torch.float32).div_(dist.get_world_size(group))
    reduced = dist.all_reduce(full, group=group, async_op=True).get_future()

    def back(future):
        return buffer.copy_(future.value()[0])

    return reduced.then(back)


class OtherRankFailed(Exception):
    """Rank 0 failed during set-up and has reported why; the other ranks just stop (the CLI exits 2 quietly)."""


def on_main(d: Dist, fn):
    """Run fn on rank 0 only; every rank learns whether it worked, so none waits forever on a failed rank 0."""
    result, error = None, None
    if d.main:
        try:
            result = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised below after telling the other ranks
            error = e
    failed = d.any(error is not None)
    if error is not None:
        raise error
    if failed:
        raise OtherRankFailed()
    return result
