"""Error metrics: MSE, MAE, RMSE over all entries, and HECLIP's RMSE on per-gene z-scores."""
from __future__ import annotations

import numpy as np

from .correlation import _check_pair, constant_columns

__all__ = ["mse", "mae", "rmse", "rmse_zscore", "rmse_zscore_per_gene", "zscore_columns"]


def mse(pred, true) -> float:
    """``mean((p − t)²)`` over all ``n_spots × G`` entries."""
    pred, true = _check_pair(pred, true)
    return float(np.mean((pred - true) ** 2))


def mae(pred, true) -> float:
    """``mean(|p − t|)`` over all ``n_spots × G`` entries."""
    pred, true = _check_pair(pred, true)
    return float(np.mean(np.abs(pred - true)))


def rmse(pred, true) -> float:
    """``sqrt(mean((p − t)²))`` over all ``n_spots × G`` entries."""
    return float(np.sqrt(mse(pred, true)))


def zscore_columns(a) -> np.ndarray:
    """Per-gene z-scores ``(x − mean) / std`` (population std, ``ddof=0``, as ``scipy.stats.zscore``).

    ``(n_spots, G)`` → same shape. A constant gene becomes all zeros (scipy would give NaN): it sits at its
    own mean everywhere.
    """
    a = np.asarray(a.toarray() if hasattr(a, "toarray") else a, dtype=np.float64)
    sd = a.std(0)
    ok = ~constant_columns(a) & (sd > 0)
    return np.divide(a - a.mean(0), sd, out=np.zeros_like(a), where=ok)


def rmse_zscore_per_gene(pred, true) -> np.ndarray:
    """``(G,)``: ``RMSE_g = sqrt(mean_i (z(p)_ig − z(t)_ig)²)`` with prediction and truth each z-scored per gene
    with its own mean and std (:func:`zscore_columns`).

    Scale-free: it measures the shape of each gene's spatial pattern, not its level. Predicting a gene's
    mean everywhere (or any constant) costs exactly 1; a constant true gene against a varying prediction
    also costs 1; both constant costs 0. In general ``RMSE_g = sqrt(2 − 2 r_g)`` for non-constant genes.
    """
    pred, true = _check_pair(pred, true)
    return np.sqrt(np.mean((zscore_columns(pred) - zscore_columns(true)) ** 2, axis=0))


def rmse_zscore(pred, true, average: str = "genes") -> float:
    """HECLIP's RMSE on per-gene z-scores.

    ``average="genes"`` (default, as HECLIP's evaluation code does): the mean over genes of
    :func:`rmse_zscore_per_gene`. ``average="entries"``: one RMSE over all ``n_spots × G`` z-scored
    entries, ``sqrt(mean_g RMSE_g²)``.
    """
    per_gene = rmse_zscore_per_gene(pred, true)
    if average == "genes":
        return float(per_gene.mean())
    if average == "entries":
        return float(np.sqrt(np.mean(per_gene ** 2)))
    raise ValueError(f"average must be 'genes' or 'entries', got {average!r}")
