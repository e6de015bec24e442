r"""Data-parallel training over processes (``torchrun``): process group, gathered rows, reduced logs.

``torchrun --nproc_per_node N -m stgraph.cli train ...`` (or ``stgraph train --nproc N``; several machines:
``torchrun --nnodes M --nproc_per_node N --rdzv-backend c10d --rdzv-endpoint HOST:PORT``, see
docs/distributed.md) starts the copies of the training job. Each learns from its shard of every global
batch; the gradients are averaged by ``torch.nn.parallel.DistributedDataParallel`` around the
:class:`~stgraph.training.task.TrainingTask` (model + objective, its forward the loss), so the processes
take the optimisation steps one process would take on the same global batches.

Two ways of sharding a step (chosen by the trainer from ``train.batching``):

- **rows** (spot batching across slides): every rank draws the same global batch of B spots and encodes
  its contiguous slice of about B/N rows; the branch outputs are gathered (:func:`gather_rows`, with
  gradient for the local slice, as open_clip's ``gather_features`` without ``gather_with_grad``) so every
  rank evaluates the loss on the whole global batch, and the contrastive negatives grow with N. Each rank's
  backward gives the gradient through its own rows; their *sum* is the single-process gradient of the
  global loss, and since DDP *averages*, the trainer scales the loss by N before the backward.
- **jobs** (slide batching, and spot batching ``within_slide``): a job is one slide's step; each global
  step is N × ``train.accumulate`` consecutive jobs, and DDP's average is the mean over the jobs, as a
  single process accumulating them would take.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch
import torch.distributed as dist

from ..utils.distributed import (DistEnv, DistributedError, _active, _comm_device, barrier, env_world_size,
                                 init_distributed)

__all__ = ["DistEnv", "DistributedError", "init_distributed", "gather_rows", "all_reduce_mean", "barrier",
           "env_world_size"]


class _GatherRows(torch.autograd.Function):
    """All ranks' rows in rank order; the backward keeps only the gradient of this rank's slice.

    Every rank evaluates the same global loss, so the gradient of a rank's slice is computed locally; the
    other ranks' slices are constants here (their gradient is computed on their own rank).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: tuple, rank: int):
        width = max(sizes)
        padded = x.new_zeros((width, *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        ctx.rank, ctx.start = rank, sum(sizes[:rank])
        ctx.n = x.shape[0]
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad[ctx.start : ctx.start + ctx.n], None, None


def gather_rows(x: torch.Tensor, sizes: Optional[Iterable[int]] = None) -> torch.Tensor:
    r"""Concatenate every rank's ``x`` (n_r, ...) along rows → (Σ n_r, ...), in rank order.

    The result carries gradient only into this rank's rows (open_clip's ``gather_features`` with
    ``gather_with_grad=False``). ``sizes``: every rank's row count when known (else one extra all-gather).
    Identity for a single process.
    """
    if not _active():
        return x
    if x.dtype in (torch.float16, torch.bfloat16):
        # Mixed-precision outputs travel as float32 (gloo has no half types); the loss is float32 anyway.
        x = x.float()
    if sizes is None:
        n = torch.tensor([x.shape[0]], device=x.device)
        counts = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
        dist.all_gather(counts, n)
        sizes = [int(c) for c in counts]
    return _GatherRows.apply(x, tuple(int(s) for s in sizes), dist.get_rank())


def all_reduce_mean(values: dict[str, float], weight: float = 1.0) -> dict[str, float]:
    """The ``weight``-weighted mean over ranks of each value (same keys on every rank)."""
    if not _active():
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([values[k] * weight for k in keys] + [weight], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return {k: float(t[i] / t[-1]) for i, k in enumerate(keys)}
