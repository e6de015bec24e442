"""Threads on a shared machine: keep torch's thread count when scanpy runs (its numba kernels reset the
process's OpenMP pool), and let waiting OpenMP threads yield their core (:func:`configure_threads`)."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator

__all__ = ["keep_torch_threads", "configure_threads", "SPIN_COUNT"]

#: Iterations an idle OpenMP (libgomp) thread spins before it sleeps, when the user set no policy of their own.
#: libgomp's default (300,000) keeps waiting threads on their cores, which on a machine shared with other torch
#: processes turns every parallel region of a small model into a wait for the scheduler; sleeping at once
#: (``OMP_WAIT_POLICY=PASSIVE``) slows a process running alone. ``benchmarks/results/contention.json`` measures
#: the demo's epoch alone and beside two more trainings for each setting; 1,000 keeps both close to the best.
SPIN_COUNT = "1000"


def configure_threads() -> dict:
    """Before torch is imported (the CLI's first step): unless the environment already says how OpenMP threads
    wait (``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``), make an idle one spin only :data:`SPIN_COUNT` times before
    it sleeps. Returns what was set (libgomp reads these once, when torch loads it)."""
    if "torch" in sys.modules or any(k in os.environ for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")):
        return {}
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    return {"GOMP_SPINCOUNT": SPIN_COUNT}


@contextmanager
def keep_torch_threads() -> Iterator[None]:
    """Restore ``torch.get_num_threads()`` after the block.

    scanpy's ``normalize_total``/``log1p``/HVG kernels are numba ``parallel`` functions on numba's OpenMP
    threading layer, which on first use sets the process-wide OpenMP thread count to ``NUMBA_NUM_THREADS``
    (every core), ignoring ``OMP_NUM_THREADS`` and ``torch.set_num_threads``. torch shares that OpenMP pool,
    so one normalisation silently turned a 1-thread training process into a 2-thread one: several such
    processes (``evaluate --jobs``, a benchmark beside a test run) then oversubscribe the cores, and
    OpenMP's spin-waiting made ST-GCHB training runs 5–30× slower (measured: 25 s → 2–14 min per run on the
    2-core machine). torch is not imported here: when it is not loaded yet there is nothing to restore.
    """
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    try:
        yield
    finally:
        if torch is not None and torch.get_num_threads() != before:
            torch.set_num_threads(before)
