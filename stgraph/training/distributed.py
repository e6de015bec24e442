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

import dataclasses
import datetime
import os
import sys
from typing import Iterable, Optional

import torch
import torch.distributed as dist

from ..errors import StgraphError

__all__ = ["DistEnv", "DistributedError", "init_distributed", "gather_rows", "all_reduce_mean", "barrier",
           "env_world_size"]


class DistributedError(StgraphError, RuntimeError):
    """A multi-process launch that cannot work (a backend missing, a bad environment)."""


@dataclasses.dataclass(frozen=True)
class DistEnv:
    """This process's place in the job: ``rank`` of ``world_size`` (``local_rank`` on its machine)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and shows progress bars."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_world_size() -> int:
    """``WORLD_SIZE`` as set by ``torchrun`` (1 when not launched by it)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise DistributedError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def init_distributed(device: torch.device) -> DistEnv:
    """Join the process group ``torchrun`` describes in the environment (no-op for a single process).

    The backend is NCCL for CUDA devices and gloo on CPU. A CUDA device is pinned to ``LOCAL_RANK``.
    """
    world = env_world_size()
    if world <= 1:
        return DistEnv()
    try:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    except KeyError as err:
        raise DistributedError(f"WORLD_SIZE={world} but {err.args[0]} is not set: launch with torchrun "
                               "(or `stgraph train --nproc N`)") from None
    _die_with_launcher()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and not dist.is_nccl_available():
        backend = "gloo"
    if not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed")
    if not dist.is_initialized():
        kwargs = {"device_id": torch.device("cuda", local_rank)} if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30), **kwargs)
    return DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, backend=backend)


def _die_with_launcher() -> None:
    """End this rank when the torchrun agent that started it dies.

    torchrun starts each rank in a session of its own, so a ``kill -9`` of the launcher (or the OOM killer)
    would leave the ranks training on, writing into the run folder that a ``--resume`` then uses. On Linux
    the kernel sends SIGKILL to this process when its parent dies (``PR_SET_PDEATHSIG``).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the launcher died before the call above
        os._exit(1)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _comm_device() -> torch.device:
    # NCCL reduces CUDA tensors only; gloo CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if _active():
        dist.barrier()


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
