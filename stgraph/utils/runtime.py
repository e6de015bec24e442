"""Device choice, seeding and a background prefetching iterator."""
from __future__ import annotations

import queue
import random
import threading
from typing import Iterable, Iterator, TypeVar

import numpy as np
import torch

from ..errors import StgraphError

__all__ = ["DeviceError", "resolve_device", "seed_everything", "prefetch"]

T = TypeVar("T")


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


_DONE = object()


def prefetch(items: Iterable[T], depth: int = 1) -> Iterator[T]:
    """Iterate ``items`` while a background thread already produces the next ``depth`` of them.

    Made for I/O-bound producers that release the GIL (TIFF tile decompression, image resizing) feeding a
    compute-bound consumer (a backbone forward): the two overlap, and at most ``depth`` items wait in the
    queue (plus the one the consumer holds and the one being produced), so memory stays bounded. Items
    come in the order ``items`` yields them; an exception in the producer is raised in the consumer at that
    point. ``depth <= 0`` iterates ``items`` in the calling thread, without a thread.

    Closing the returned generator early (``break``, an exception in the consumer) stops the producer after
    the item it is making, and waits for it.
    """
    if depth <= 0:
        yield from items
        return
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
        except BaseException as err:  # handed to the consumer, raised there
            put((False, err))
            return
        put((True, _DONE))

    worker = threading.Thread(target=produce, name="stgraph-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            ok, item = buffer.get()
            if not ok:
                raise item
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        worker.join()
