r"""Per-spot prediction intervals: split-conformal over the training slides (CV+), normalised per gene and spot.

Calibration scores are the out-of-slide residuals of the training slides (each predicted by the model fitted on
the others), on their *un-centred* values: a slide's offset from the training mean profile (depth, batch,
patient: the reason targets are centred per slide for fitting) is part of each score, so the intervals cover
it. Scores are normalised by a per-gene scale that grows with the prediction (expression in
log1p(counts per 10,000) is skewed: a spot predicted near zero varies less than one predicted high),

.. math::
    s_{i,g} = \frac{|y_{i,g} - \hat y_{i,g}|}{c_g + \hat y_{i,g}}, \qquad c_g = \operatorname{median}_i |y_{i,g} - \hat y_{i,g}|,

and the interval at level :math:`1-\alpha` for a query spot is
:math:`[\max(0, \hat y - q_g\,(c_g + \hat y)),\ \hat y + q_g\,(c_g + \hat y)]` with :math:`q_g` the
:math:`\lceil (n+1)(1-\alpha) \rceil`-th smallest of the gene's n scores (the finite-sample correction; the
largest when that is beyond n).
Quantiles are stored for the levels :data:`INTERVAL_LEVELS`; a level between two is served by the next higher
(conservative).
"""
from __future__ import annotations

import numpy as np

__all__ = ["INTERVAL_LEVELS", "calibrate_intervals", "intervals", "level_index", "marginal_quantiles"]

#: Interval levels whose score quantiles a run stores (0.50, 0.51, ..., 0.99).
INTERVAL_LEVELS = np.round(np.arange(0.50, 0.995, 0.01), 2)


def calibrate_intervals(y: np.ndarray, oof: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(c (G,), quantiles (len(INTERVAL_LEVELS), G))`` from out-of-slide predictions ``oof`` of the
    training values ``y`` (both (N, G), un-centred, the predictions clipped at 0 as predict writes them)."""
    y = np.asarray(y, np.float64)
    oof = np.maximum(np.asarray(oof, np.float64), 0.0)
    res = np.abs(y - oof)
    c = np.maximum(np.median(res, axis=0), 1e-3)
    scores = np.sort(res / (c + oof), axis=0)
    n = scores.shape[0]
    # The ⌈(n + 1)·level⌉-th smallest score (split-conformal's finite-sample quantile); past n, the largest.
    k = np.minimum(np.ceil((n + 1) * INTERVAL_LEVELS - 1e-9).astype(int), n)
    q = scores[k - 1]
    return c.astype(np.float32), q.astype(np.float32)


def level_index(level: float) -> int:
    """Index of the stored level that serves ``level``: the smallest stored level ≥ it."""
    if not 0.5 <= float(level) <= 0.99:
        raise ValueError(f"interval level must be in [0.50, 0.99], got {level}")
    return int(np.searchsorted(INTERVAL_LEVELS, float(level) - 1e-9))


def intervals(pred: np.ndarray, c: np.ndarray, quantiles: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """``(lower, upper)`` (n, G) float32 at ``level`` around ``pred`` (n, G)."""
    pred = np.asarray(pred, np.float32)
    half = quantiles[level_index(level)][None, :] * (c[None, :] + pred)
    return np.maximum(pred - half, 0.0).astype(np.float32), (pred + half).astype(np.float32)


def marginal_quantiles(y: np.ndarray) -> np.ndarray:
    """``(len(INTERVAL_LEVELS), 2, G)``: each gene's central interval of the training values at every level
    (the interval a prediction that knew nothing would give; the bar conformal widths are compared with)."""
    y = np.asarray(y, np.float64)
    a = (1 - INTERVAL_LEVELS) / 2
    lo = np.quantile(y, a, axis=0)
    hi = np.quantile(y, 1 - a, axis=0)
    return np.stack([lo, hi], axis=1).astype(np.float32)
