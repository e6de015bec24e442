r"""Per-gene reliability: the Pearson r a gene's map can be expected to reach on a slide the model never saw.

On the training slides, leave-one-slide-out: slide :math:`s` predicted by the model fitted on the others gives
:math:`r_{g,s}`, the per-gene Pearson r across its spots. The run's expectation is their mean,
:math:`\bar r_g = \frac1K\sum_s r_{g,s}`, with their standard deviation as its spread.

On a given query slide the expectation is adjusted by how much the gene's prediction varies there compared with
the held-out training slides: with :math:`\sigma_{g}` the sd of the gene's prediction across the query's spots and
:math:`\bar\sigma_g` its mean over the inner held-out slides,

.. math:: r^{\text{slide}}_g = \bar r_g \cdot \min\big(\sigma_g / \bar\sigma_g,\ 2\big)

(a map that hardly varies on this slide cannot follow much of the gene's pattern there). On HER2+ this ranks
genes better than :math:`\bar r_g` alone (``benchmarks/results/trust_her2st*``).
"""
from __future__ import annotations

import numpy as np

__all__ = ["fold_gene_r", "slide_expected_r", "SLIDE_RATIO_CAP"]

#: Upper bound of the slide adjustment (a query whose maps vary far more than training's gains little more).
SLIDE_RATIO_CAP = 2.0


def fold_gene_r(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-gene Pearson r across spots (NaN where either side is constant): (n, G), (n, G) → (G,)."""
    p = np.asarray(pred, np.float64)
    t = np.asarray(true, np.float64)
    p, t = p - p.mean(0), t - t.mean(0)
    denom = np.sqrt((p * p).sum(0) * (t * t).sum(0))
    r = np.full(p.shape[1], np.nan)
    ok = denom > 0
    r[ok] = (p * t).sum(0)[ok] / denom[ok]
    return np.clip(r, -1.0, 1.0)


def slide_expected_r(expected_r: np.ndarray, fold_pred_sd: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The expected r adjusted to one slide (module docstring): (G,), (G,), (n, G) → (G,)."""
    sd = np.asarray(pred, np.float64).std(0)
    ratio = np.where(np.asarray(fold_pred_sd) > 0, sd / np.maximum(fold_pred_sd, 1e-12), 0.0)
    return np.asarray(expected_r) * np.clip(ratio, 0.0, SLIDE_RATIO_CAP)
