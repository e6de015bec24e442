"""Aggregation ``gaussian_kernel``: neighbours weighted by a Gaussian of their embedding distance.

.. math::
    w_{qj} = \\frac{\\exp(-d_{qj}^2 / 2h_q^2)}{\\sum_l \\exp(-d_{ql}^2 / 2h_q^2)}

with ``h_q = bandwidth`` when given, else the median of query ``q``'s k neighbour distances (adaptive:
the kernel is as wide as the neighbourhood). It asks stgraph for ``distances`` by naming the parameter;
``inference.distance`` chooses them (euclidean by default).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from stgraph.retrieval import AGGREGATIONS

__all__ = ["gaussian_kernel"]


@AGGREGATIONS.register("gaussian_kernel")
def gaussian_kernel(scores: np.ndarray, distances: np.ndarray, bandwidth: Optional[float] = None) -> np.ndarray:
    """w ∝ exp(−d² / 2h²), h = bandwidth or each query's median neighbour distance."""
    d = np.asarray(distances, dtype=np.float64)
    if bandwidth is None:
        h = np.median(d, axis=1, keepdims=True)
    elif not bandwidth > 0:
        raise ValueError(f"gaussian_kernel bandwidth must be > 0, got {bandwidth}")
    else:
        h = np.full((d.shape[0], 1), float(bandwidth))
    h = np.maximum(h, 1e-12)  # k identical neighbours: every weight equal, not 0/0
    logits = -(d ** 2) / (2 * h ** 2)
    w = np.exp(logits - logits.max(axis=1, keepdims=True))
    return w / w.sum(axis=1, keepdims=True)
