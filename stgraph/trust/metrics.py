"""How good the trust itself is, on a slide whose truth is known (evaluation, ``benchmarks/trust_her2st.py``)."""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from .conformal import intervals, level_index
from .reliability import fold_gene_r

__all__ = ["trust_metrics", "TRUST_LEVELS"]

#: Interval levels the evaluation reports.
TRUST_LEVELS = (0.8, 0.9, 0.95)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan")
    from scipy.stats import spearmanr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(a[ok], b[ok]).correlation)


def trust_metrics(pred: np.ndarray, truth: np.ndarray, record, expected_r_slide: np.ndarray,
                  reliable: np.ndarray, in_distribution: np.ndarray,
                  levels: Sequence[float] = TRUST_LEVELS) -> dict:
    """Columns of an evaluation row (all (n, G) arrays in the predicted units, genes in the record's order):

    * ``trust_spearman`` / ``trust_spearman_slide``: Spearman between the expected r (run / this slide) and
      the realised per-gene r;
    * ``reliable_n``, ``reliable_r`` (their mean realised r), ``reliable_gt_0.1`` (the share of them above
      0.1), ``unreliable_r``;
    * ``coverage_<level>`` and ``width_<level>``: the share of true values inside the conformal interval, and
      its mean width over the mean width of the training values' central interval at that level;
    * ``ood_false_alarm``: the share of the slide's spots flagged out of distribution.
    """
    real = fold_gene_r(pred, truth)
    reliable = np.asarray(reliable, bool) & np.isfinite(real)
    other = ~np.asarray(reliable, bool) & np.isfinite(real)
    row = {"trust_spearman": _spearman(record.expected_r, real),
           "trust_spearman_slide": _spearman(np.asarray(expected_r_slide, float), real),
           "reliable_n": int(reliable.sum()),
           "reliable_r": float(real[reliable].mean()) if reliable.any() else float("nan"),
           "reliable_gt_0.1": float((real[reliable] > 0.1).mean()) if reliable.any() else float("nan"),
           "unreliable_r": float(real[other].mean()) if other.any() else float("nan")}
    for level in levels:
        lower, upper = intervals(pred, record.scale, record.quantiles, level)
        marginal = record.marginal[level_index(level)]
        key = f"{int(round(level * 100))}"
        row[f"coverage_{key}"] = float(((truth >= lower) & (truth <= upper)).mean())
        row[f"width_{key}"] = float((upper - lower).mean() / max(float((marginal[1] - marginal[0]).mean()), 1e-12))
    row["ood_false_alarm"] = float(1.0 - np.mean(in_distribution)) if len(in_distribution) else float("nan")
    return row
