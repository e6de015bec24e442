"""Per-spot ranking metrics."""
from __future__ import annotations

import numpy as np

from .correlation import _check_pair

__all__ = ["hit_at_t"]


def hit_at_t(pred, true, t: int = 10, any_overlap: bool = False) -> float:
    """Hit@T: how well each spot's top-T predicted genes match its top-T true genes.

    Default: ``mean_i |topT(pred_i) ∩ topT(true_i)| / T`` (fraction of shared genes, averaged over spots).
    ``any_overlap=True``: the fraction of spots whose two top-T sets share at least one gene.
    Ties are broken by gene order.
    """
    pred, true = _check_pair(pred, true)
    t = int(min(t, pred.shape[1]))
    if t < 1:
        raise ValueError("t must be at least 1")
    top_p = np.argsort(-pred, axis=1, kind="stable")[:, :t]
    top_t = np.argsort(-true, axis=1, kind="stable")[:, :t]
    hits = np.array([len(np.intersect1d(a, b, assume_unique=True)) for a, b in zip(top_p, top_t)])
    return float(np.mean(hits > 0)) if any_overlap else float(np.mean(hits / t))
