"""Per-spot ranking metrics."""
from __future__ import annotations

import numpy as np

from .correlation import _check_pair

__all__ = ["hit_at_t", "top_t_mask"]


def top_t_mask(a: np.ndarray, t: int) -> np.ndarray:
    """``(n_spots, G)`` bool: True at each spot's ``t`` highest genes.

    Ties are broken by gene order (the lower column index wins), so the result is deterministic.
    """
    order = np.argsort(-a, axis=1, kind="stable")[:, :t]
    mask = np.zeros(a.shape, dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask


def hit_at_t(pred, true, t: int = 10, any_overlap: bool = False, chunk: int = 2048) -> float:
    """Hit@T: agreement of each spot's top-T predicted genes with its top-T true genes.

    With ``P_i = topT(pred_i)`` and ``T_i = topT(true_i)`` (the T highest genes of spot ``i``):

    - default: ``mean_i |P_i ∩ T_i| / T`` — the fraction of the true top-T recovered, averaged over spots;
    - ``any_overlap=True``: ``mean_i [P_i ∩ T_i ≠ ∅]`` — the fraction of spots whose two sets share at
      least one gene (the definition in HECLIP's evaluation code, which reports T = 1…5).

    Parameters
    ----------
    pred, true
        ``(n_spots, G)`` matrices.
    t
        Set size ``T`` (≥ 1).
    any_overlap
        Use the "at least one shared gene" variant.
    chunk
        Spots per block, bounding memory to a few ``chunk × G`` arrays.

    Returns
    -------
    float
        In [0, 1]; NaN when ``T ≥ G`` (every gene would be in both sets, so the score is trivially 1).
        Ties are broken by gene order.
    """
    pred, true = _check_pair(pred, true)
    t = int(t)
    if t < 1:
        raise ValueError(f"t must be at least 1, got {t}")
    if t >= pred.shape[1]:
        return float("nan")
    hits = np.concatenate([
        (top_t_mask(pred[i:i + chunk], t) & top_t_mask(true[i:i + chunk], t)).sum(1)
        for i in range(0, pred.shape[0], chunk)
    ])
    return float(np.mean(hits > 0)) if any_overlap else float(np.mean(hits / t))
