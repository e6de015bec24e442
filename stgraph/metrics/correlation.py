"""Correlation metrics: per-gene Pearson across spots, gene sets, gene–gene structure preservation."""
from __future__ import annotations

import warnings
from typing import Optional, Sequence

import numpy as np

__all__ = ["pearson_per_gene", "gene_sets", "mean_pearson", "n_genes_above",
           "gene_gene_correlation_preservation", "variance_ratio"]


def _as_2d(a) -> np.ndarray:
    a = np.asarray(a.toarray() if hasattr(a, "toarray") else a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"expected a (n_spots, n_genes) matrix, got shape {a.shape}")
    return a


def _check_pair(pred, true) -> tuple[np.ndarray, np.ndarray]:
    pred, true = _as_2d(pred), _as_2d(true)
    if pred.shape != true.shape:
        raise ValueError(f"prediction {pred.shape} and truth {true.shape} differ in shape")
    if not (np.isfinite(pred).all() and np.isfinite(true).all()):
        raise ValueError("prediction or truth contains NaN/inf")
    return pred, true


def pearson_per_gene(pred, true) -> np.ndarray:
    """Pearson r between predicted and true expression across spots, per gene.

    ``r_g = Σ_i (p_ig − p̄_g)(t_ig − t̄_g) / sqrt(Σ_i (p_ig − p̄_g)² · Σ_i (t_ig − t̄_g)²)``.
    Shapes (n_spots, G) → (G,); NaN where either side is constant (zero variance).
    """
    pred, true = _check_pair(pred, true)
    pc, tc = pred - pred.mean(0), true - true.mean(0)
    denom = np.sqrt((pc ** 2).sum(0) * (tc ** 2).sum(0))
    r = np.full(pred.shape[1], np.nan)
    ok = denom > 1e-12 * max(1.0, float(np.abs(denom).max(initial=0.0)))
    r[ok] = (pc * tc).sum(0)[ok] / denom[ok]
    return np.clip(r, -1.0, 1.0)


def gene_sets(true, gene_names: Sequence[str], n: int = 50,
              markers: Optional[Sequence[str]] = None) -> dict[str, list[str]]:
    """The gene sets the papers report.

    ``ACG``: all genes; ``HEG``: top-``n`` by mean true expression; ``HVG``: top-``n`` by variance of the true
    expression; ``MG``: the given markers that are present (a warning names absent ones).
    Ties are broken by gene order (stable sort).
    """
    true = _as_2d(true)
    names = list(map(str, gene_names))
    if len(names) != true.shape[1]:
        raise ValueError(f"{len(names)} gene names for {true.shape[1]} columns")
    order_mean = np.argsort(-true.mean(0), kind="stable")[:n]
    order_var = np.argsort(-true.var(0), kind="stable")[:n]
    sets = {"ACG": names, "HEG": [names[i] for i in order_mean], "HVG": [names[i] for i in order_var]}
    if markers:
        present = [g for g in markers if g in set(names)]
        absent = [g for g in markers if g not in set(names)]
        if absent:
            warnings.warn(f"marker genes not among the evaluated genes: {absent}", UserWarning, stacklevel=2)
        sets["MG"] = present
    return sets


def mean_pearson(r: np.ndarray, genes_mask=None) -> tuple[float, int, int]:
    """Mean of ``r`` over the masked genes, NaNs excluded → (mean, n_used, n_nan)."""
    r = np.asarray(r, dtype=np.float64)
    sel = r if genes_mask is None else r[np.asarray(genes_mask)]
    nan = np.isnan(sel)
    used = sel[~nan]
    return (float(used.mean()) if used.size else float("nan")), int(used.size), int(nan.sum())


def n_genes_above(r: np.ndarray, threshold: float = 0.3) -> int:
    """Number of genes with ``r > threshold`` (NaN counts as not above)."""
    r = np.asarray(r, dtype=np.float64)
    return int(np.sum(np.nan_to_num(r, nan=-np.inf) > threshold))


def gene_gene_correlation_preservation(pred, true) -> float:
    """Pearson correlation between the upper triangles of the gene–gene correlation matrices of
    prediction and truth (genes constant on either side are dropped)."""
    pred, true = _check_pair(pred, true)
    keep = (pred.std(0) > 0) & (true.std(0) > 0)
    if keep.sum() < 3:
        return float("nan")
    cp = np.corrcoef(pred[:, keep], rowvar=False)
    ct = np.corrcoef(true[:, keep], rowvar=False)
    iu = np.triu_indices(int(keep.sum()), k=1)
    a, b = cp[iu], ct[iu]
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def variance_ratio(pred, true) -> np.ndarray:
    """Per-gene ``var(pred) / var(true)`` across spots; NaN where the true variance is 0.

    kNN averaging shrinks variance: a median well below 1 means over-smoothed predictions.
    """
    pred, true = _check_pair(pred, true)
    vt = true.var(0)
    out = np.full(pred.shape[1], np.nan)
    ok = vt > 0
    out[ok] = pred.var(0)[ok] / vt[ok]
    return out
