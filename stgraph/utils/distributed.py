"""Processes launched by ``torchrun``: this process's place in the job, the process group, a barrier.

Shared by training (data-parallel steps, :mod:`stgraph.training.distributed`) and prediction (a cohort's slides
sharded over ranks, :mod:`stgraph.inference.cohort`).
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import sys
from typing import Any, Optional

import torch
import torch.distributed as dist

from ..errors import StgraphError

__all__ = ["DistEnv", "DistributedError", "init_distributed", "barrier", "env_world_size", "all_gather_object"]


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


def all_gather_object(obj: Any) -> list:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` for a single process."""
    if not _active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
