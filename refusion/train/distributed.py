"""Several processes (``torchrun --nproc_per_node N -m refusion.train ...``).

DistributedDataParallel cannot carry the higher-order gradients of the meta step, so the
trainer synchronises gradients itself: every gradient that leaves a process (the inner
gradients of F and R in the meta step, P's meta-gradient, F's and R's gradients in the fusion
steps) is averaged over the processes with an all-reduce. Each process works on its shard of a
global batch; because all losses are means over the batch, the averaged gradient is exactly
the gradient of the global batch, and N processes follow the same trajectory as one process
with the whole batch (up to float rounding). The inner gradients of the second-order meta step
are averaged with a *differentiable* all-reduce (:class:`_AllReduceSum`, whose backward is
again an all-reduce, to any order), so the outer backward also flows across processes.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass
class DistInfo:
    """Where this process stands: ``world`` processes, this one is ``rank``."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device_type: str) -> DistInfo:
    """Join the process group described by torchrun's environment (``WORLD_SIZE`` > 1).

    gloo on the CPU, NCCL on CUDA. A single process (no torchrun) needs no group.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return DistInfo(world=world, rank=rank, local_rank=local)


def shutdown(timeout_s: float = 10.0) -> None:
    """Leave the process group once every process has come this far (or ``timeout_s`` later).

    Without the barrier a rank that finishes first tears its gloo connections down while a
    peer may still be writing to them; the peer's gloo thread then fails and the process
    aborts ("terminate called without an active exception", seen once in CI). Every way out
    of a run that the ranks agree on (the end, Ctrl-C, a NaN stop) meets here. After an error
    on one rank only, the others never arrive: the wait is bounded, so that the failing rank
    still leaves and the launcher stops the rest.
    """
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "gloo":  # the abort is gloo's; NCCL tears down on its own
            # monitored_barrier (gloo only) honours its timeout; a plain barrier would wait
            # for gloo's 30-minute default when a peer never comes
            with contextlib.suppress(RuntimeError):  # a peer gone, or the timeout
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=timeout_s))
        dist.destroy_process_group()


def mean_grads(grads: list[Tensor], info: DistInfo) -> list[Tensor]:
    """Average a list of gradients over the processes (one flat all-reduce; identity alone)."""
    if not info.enabled or not grads:
        return grads
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= info.world
    out, i = [], 0
    for g in grads:
        out.append(flat[i:i + g.numel()].view_as(g))
        i += g.numel()
    return out


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes. The gradient of a sum taken everywhere is the sum of the
    gradients, so the backward is the same all-reduce; it goes through ``apply`` so that a
    double backward (the second-order meta step) is differentiated too. (Ours rather than
    ``torch.distributed.nn.functional.all_reduce``, deprecated in recent torch releases.)"""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # noqa: D102
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        return _AllReduceSum.apply(grad)


def mean_grads_differentiable(grads: list[Tensor], info: DistInfo) -> list[Tensor]:
    """:func:`mean_grads` that autograd can differentiate (its backward is an all-reduce)."""
    if not info.enabled or not grads:
        return grads
    flat = _AllReduceSum.apply(torch.cat([g.reshape(-1) for g in grads])) / info.world
    out, i = [], 0
    for g in grads:
        out.append(flat[i:i + g.numel()].view_as(g))
        i += g.numel()
    return out


def sync_module_grads(modules: list[nn.Module], info: DistInfo) -> None:
    """Average the ``.grad`` of every parameter of ``modules`` over the processes, in place."""
    if not info.enabled:
        return
    params = [p for m in modules for p in m.parameters() if p.grad is not None]
    for p, g in zip(params, mean_grads([p.grad for p in params], info)):
        p.grad.copy_(g)


def broadcast_modules(modules: list[nn.Module], info: DistInfo) -> None:
    """Give every process rank 0's weights (same start even if seeding ever differed)."""
    if not info.enabled:
        return
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            dist.broadcast(t.data, src=0)


def any_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every process when ``flag`` is true on any (stop requests, NaN losses)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
