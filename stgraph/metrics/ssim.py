"""SSIM per gene as HECLIP defines it."""
from __future__ import annotations

import numpy as np

from .correlation import _check_pair

__all__ = ["ssim_per_gene", "mean_ssim"]


def _max_scale(a: np.ndarray) -> np.ndarray:
    mx = a.max(0)
    return np.divide(a, mx, out=np.zeros_like(a), where=mx > 0)


def ssim_per_gene(pred, true, dynamic_range: float = 1.0) -> np.ndarray:
    """Global SSIM between the predicted and true vectors of each gene over spots.

    Each vector (prediction and truth separately) is divided by its own maximum (a gene whose maximum is
    ≤ 0 becomes all zeros), so ``M = dynamic_range = 1``; then with ``C1 = (0.01·M)²``, ``C2 = (0.03·M)²``::

        SSIM = ((2 μx μy + C1)(2 σxy + C2)) / ((μx² + μy² + C1)(σx² + σy² + C2))

    where μ, σ², σxy are the means, population variances and covariance over spots. Shapes (n, G) → (G,).
    """
    pred, true = _check_pair(pred, true)
    x, y = _max_scale(pred), _max_scale(true)
    c1, c2 = (0.01 * dynamic_range) ** 2, (0.03 * dynamic_range) ** 2
    mx, my = x.mean(0), y.mean(0)
    vx, vy = x.var(0), y.var(0)
    cov = ((x - mx) * (y - my)).mean(0)
    return ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))


def mean_ssim(pred, true) -> float:
    """Mean of :func:`ssim_per_gene` over genes."""
    return float(np.mean(ssim_per_gene(pred, true)))
