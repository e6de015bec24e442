"""Loss-term health: warn, naming the term, when a logged term is non-finite or stops moving.

A term that is constant from epoch to epoch is either saturated (its gradient vanished, as a DGI term
stuck at −ln 1e-15 = 34.54 was) or disconnected from the parameters; either way its module learns nothing
and an ablation of it compares two equivalent models. See ``docs/loss_terms.md`` for healthy values.
"""
from __future__ import annotations

import math
import warnings
from typing import Mapping

__all__ = ["LossTermWarning", "TermMonitor"]


class LossTermWarning(UserWarning):
    """A loss term is non-finite, or has not changed for ``patience`` epochs."""


class TermMonitor:
    r"""Watch per-epoch loss terms and warn once per term and problem.

    A term is *stuck* when, over the last ``patience`` epochs, its spread is at most
    ``rtol · max(|mean|, 1e-8)``:

    .. math:: \max_t \mathcal{L}_t - \min_t \mathcal{L}_t \le \mathrm{rtol}\cdot\max(|\bar{\mathcal{L}}|, 10^{-8})

    Parameters
    ----------
    patience
        Number of consecutive epochs that must show no change (≥ 2).
    rtol
        Relative spread below which the term counts as unchanged.
    ignore
        Log columns that are not loss terms (``total`` is checked for finiteness only).
    """

    def __init__(self, patience: int = 5, rtol: float = 1e-6, ignore=("epoch", "split", "seconds")):
        if patience < 2:
            raise ValueError(f"patience must be at least 2 epochs, got {patience}")
        self.patience, self.rtol = int(patience), float(rtol)
        self.ignore = set(ignore)
        self.values: dict[str, list[float]] = {}
        self.warned: set[tuple[str, str]] = set()

    def _warn(self, name: str, problem: str, message: str) -> None:
        if (name, problem) not in self.warned:
            self.warned.add((name, problem))
            warnings.warn(message, LossTermWarning, stacklevel=3)

    def update(self, epoch: int, logs: Mapping[str, float]) -> list[str]:
        """Record one epoch's training logs; warn about bad terms. Returns the names flagged this epoch."""
        flagged = []
        for name, value in logs.items():
            if name in self.ignore:
                continue
            value = float(value)
            if not math.isfinite(value):
                flagged.append(name)
                self._warn(name, "nonfinite", f"loss term {name!r} is {value} at epoch {epoch}: the loss diverged "
                                              f"or a term divided by zero; lower train.lr or check the inputs")
                continue
            if name == "total":
                continue
            history = self.values.setdefault(name, [])
            history.append(value)
            recent = history[-self.patience:]
            if len(recent) == self.patience:
                mean = sum(recent) / len(recent)
                if max(recent) - min(recent) <= self.rtol * max(abs(mean), 1e-8):
                    flagged.append(name)
                    self._warn(name, "stuck", f"loss term {name!r} has not changed for {self.patience} epochs "
                                              f"(value {mean:.6g} at epoch {epoch}): the term is saturated or "
                                              f"disconnected from the parameters, so its module is not learning")
        return flagged
