"""Device choice and seeding."""
from __future__ import annotations

import random

import numpy as np
import torch

from ..errors import StgraphError

__all__ = ["DeviceError", "resolve_device", "seed_everything"]


class DeviceError(StgraphError, RuntimeError):
    """A torch device that this machine does not have (or a name torch does not know)."""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; a device this machine lacks is a :class:`DeviceError`.

    Examples: ``cpu``, ``cuda``, ``cuda:1``, ``mps``.
    """
    name = str(name or "auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} requested but CUDA is not available on this machine "
                              "(use --device cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r} requested but this machine has {torch.cuda.device_count()} "
                              "CUDA device(s)")
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise DeviceError(f"device {name!r} requested but MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"device {name!r} is not supported: use auto, cpu, cuda, cuda:N or mps")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
