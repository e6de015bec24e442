"""Error metrics over all (spot, gene) entries."""
from __future__ import annotations

import numpy as np

from .correlation import _check_pair

__all__ = ["mse", "mae", "rmse", "rmse_zscore", "zscore_columns"]


def mse(pred, true) -> float:
    """``mean((p − t)²)`` over all entries."""
    pred, true = _check_pair(pred, true)
    return float(np.mean((pred - true) ** 2))


def mae(pred, true) -> float:
    """``mean(|p − t|)`` over all entries."""
    pred, true = _check_pair(pred, true)
    return float(np.mean(np.abs(pred - true)))


def rmse(pred, true) -> float:
    """``sqrt(mean((p − t)²))``."""
    return float(np.sqrt(mse(pred, true)))


def zscore_columns(a: np.ndarray) -> np.ndarray:
    """Per-gene z-scores ``(x − mean) / std`` (population std); a constant gene becomes all zeros."""
    a = np.asarray(a, dtype=np.float64)
    sd = a.std(0)
    return np.divide(a - a.mean(0), sd, out=np.zeros_like(a), where=sd > 0)


def rmse_zscore(pred, true) -> float:
    """HECLIP's RMSE: prediction and truth each z-scored per gene with their own mean/std, then RMSE.

    Constant genes are all zeros after z-scoring (so a constant prediction of a varying gene costs 1 per entry).
    """
    pred, true = _check_pair(pred, true)
    return rmse(zscore_columns(pred), zscore_columns(true))
