"""SSIM per gene, as HECLIP (after the SpatialBenchmarking code it reuses) defines it."""
from __future__ import annotations

import numpy as np

from .correlation import _check_pair

__all__ = ["ssim_per_gene", "mean_ssim", "max_scale_columns"]


def max_scale_columns(a: np.ndarray) -> np.ndarray:
    """Divide each column by its own maximum → ``(n_spots, G)`` with column maxima 1.

    A column whose maximum is ≤ 0 (all-zero gene) becomes all zeros (HECLIP would divide by 0 and get NaN).
    Expression is assumed non-negative; negative entries are kept as they are after the division.
    """
    mx = a.max(0)
    return np.divide(a, mx, out=np.zeros_like(a), where=mx > 0)


def ssim_per_gene(pred, true, dynamic_range: float = 1.0) -> np.ndarray:
    """Global SSIM between the predicted and true vectors of each gene over spots → ``(G,)``.

    Steps, per gene ``g``:

    1. ``x = pred[:, g] / max(pred[:, g])`` and ``y = true[:, g] / max(true[:, g])`` — each vector divided by
       **its own** maximum (HECLIP's ``scale_max`` on each matrix separately), so both peak at 1.
    2. With ``M = dynamic_range`` (1 after max-scaling), ``C1 = (0.01·M)²``, ``C2 = (0.03·M)²`` and μ, σ², σxy
       the means, population variances and covariance over the spots::

           SSIM = ((2 μx μy + C1)(2 σxy + C2)) / ((μx² + μy² + C1)(σx² + σy² + C2))

       (HECLIP writes it as luminance × contrast × structure with ``C3 = C2/2``; the product is this.)

    One window covering all spots ("global" SSIM), no Gaussian filtering. Range [−1, 1]; 1 iff the two
    max-scaled vectors are equal. Two all-zero vectors give 1.
    """
    pred, true = _check_pair(pred, true)
    if not dynamic_range > 0:
        raise ValueError(f"dynamic_range must be positive, got {dynamic_range}")
    x, y = max_scale_columns(pred), max_scale_columns(true)
    c1, c2 = (0.01 * dynamic_range) ** 2, (0.03 * dynamic_range) ** 2
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    vx, vy, cov = (xc * xc).mean(0), (yc * yc).mean(0), (xc * yc).mean(0)
    return ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))


def mean_ssim(pred, true, dynamic_range: float = 1.0) -> float:
    """Mean of :func:`ssim_per_gene` over genes (every gene has a defined SSIM)."""
    return float(np.mean(ssim_per_gene(pred, true, dynamic_range=dynamic_range)))
