"""Correlation metrics: per-gene Pearson across spots, gene sets, gene–gene structure preservation.

All functions take dense (or scipy-sparse) ``(n_spots, n_genes)`` matrices, spots as rows, genes as columns,
and compute in float64.
"""
from __future__ import annotations

import warnings
from typing import Optional, Sequence

import numpy as np

__all__ = ["pearson_per_gene", "gene_sets", "mean_pearson", "n_genes_above",
           "gene_gene_correlation_preservation", "variance_ratio", "median_variance_ratio",
           "constant_columns"]


def _as_2d(a, name: str = "matrix") -> np.ndarray:
    a = np.asarray(a.toarray() if hasattr(a, "toarray") else a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a (n_spots, n_genes) matrix, got shape {a.shape}")
    return a


def _check_pair(pred, true) -> tuple[np.ndarray, np.ndarray]:
    """Both matrices as float64 ``(n_spots, n_genes)``, same shape, finite; else ``ValueError``."""
    pred, true = _as_2d(pred, "prediction"), _as_2d(true, "truth")
    if pred.shape != true.shape:
        raise ValueError(f"prediction {pred.shape} and truth {true.shape} differ in shape")
    if pred.shape[0] == 0 or pred.shape[1] == 0:
        raise ValueError(f"empty matrices {pred.shape}: need at least one spot and one gene")
    for name, a in (("prediction", pred), ("truth", true)):
        if not np.isfinite(a).all():
            raise ValueError(f"the {name} contains {int((~np.isfinite(a)).sum())} NaN/inf value(s)")
    return pred, true


def constant_columns(a) -> np.ndarray:
    """``(G,)`` bool: genes whose values are identical on every spot (zero variance).

    Exact equality (``max == min``), not ``var < eps``: a column of equal floats can have a mean-subtracted
    residue of ~1e-17 that would otherwise yield a meaningless r = ±1.
    """
    a = _as_2d(a)
    return a.max(0) == a.min(0)


def pearson_per_gene(pred, true) -> np.ndarray:
    """Pearson r between predicted and true expression across spots, per gene.

    ``r_g = Σ_i (p_ig − p̄_g)(t_ig − t̄_g) / sqrt(Σ_i (p_ig − p̄_g)² · Σ_i (t_ig − t̄_g)²)``.

    Parameters
    ----------
    pred, true
        ``(n_spots, G)`` matrices.

    Returns
    -------
    numpy.ndarray
        ``(G,)`` float64; NaN where either side is constant across spots (zero variance), silently (count
        them with ``np.isnan``; :func:`mean_pearson` reports them).
    """
    pred, true = _check_pair(pred, true)
    undefined = constant_columns(pred) | constant_columns(true)
    pc, tc = pred - pred.mean(0), true - true.mean(0)
    num = (pc * tc).sum(0)
    denom = np.sqrt((pc * pc).sum(0) * (tc * tc).sum(0))
    r = np.full(pred.shape[1], np.nan)
    ok = ~undefined & (denom > 0)
    r[ok] = num[ok] / denom[ok]
    return np.clip(r, -1.0, 1.0)  # rounding can give 1 + 1e-16


def gene_sets(true, gene_names: Sequence[str], n: int = 50,
              markers: Optional[Sequence[str]] = None) -> dict[str, list[str]]:
    """The gene sets the papers report, chosen on the **true** expression of the evaluated slide.

    Parameters
    ----------
    true
        ``(n_spots, G)`` true expression.
    gene_names
        ``G`` names, in column order.
    n
        Size of HEG and HVG (all genes when ``n >= G``).
    markers
        Marker genes (MG); absent ones are dropped with a ``UserWarning`` that names them.

    Returns
    -------
    dict
        ``ACG``: all genes; ``HEG``: top-``n`` by mean true expression (same order as by sum);
        ``HVG``: top-``n`` by variance of the true expression; ``MG`` (only when ``markers`` is given):
        the markers present, in the order given, duplicates removed. HEG/HVG are listed best first;
        ties are broken by gene order (stable sort).
    """
    true = _as_2d(true, "truth")
    names = [str(g) for g in gene_names]
    if len(names) != true.shape[1]:
        raise ValueError(f"{len(names)} gene names for {true.shape[1]} expression columns")
    if int(n) < 1:
        raise ValueError(f"gene-set size n must be at least 1, got {n}")
    order_mean = np.argsort(-true.mean(0), kind="stable")[:n]
    order_var = np.argsort(-true.var(0), kind="stable")[:n]
    sets = {"ACG": names, "HEG": [names[i] for i in order_mean], "HVG": [names[i] for i in order_var]}
    if markers is not None:
        known = set(names)
        wanted = list(dict.fromkeys(str(g) for g in markers))
        absent = [g for g in wanted if g not in known]
        if absent:
            warnings.warn(f"{len(absent)} marker gene(s) are not among the {len(names)} evaluated genes and are "
                          f"left out of MG: {absent}", UserWarning, stacklevel=2)
        sets["MG"] = [g for g in wanted if g in known]
    return sets


def mean_pearson(r, genes_mask=None) -> tuple[float, int, int]:
    """Mean of per-gene ``r`` over a gene subset, NaN genes excluded.

    Parameters
    ----------
    r
        ``(G,)`` per-gene correlations (NaN for undefined genes).
    genes_mask
        ``(G,)`` bool mask or integer indices of the genes to average; ``None`` = all genes.

    Returns
    -------
    (mean, n_used, n_nan)
        ``mean`` is NaN when no gene is usable; ``n_nan`` counts the NaN genes of the subset left out.
    """
    r = np.asarray(r, dtype=np.float64).ravel()
    if genes_mask is None:
        sel = r
    else:
        mask = np.asarray(genes_mask)
        if mask.dtype == bool and mask.shape != r.shape:
            raise ValueError(f"boolean gene mask has shape {mask.shape}, correlations {r.shape}")
        sel = r[mask]
    nan = np.isnan(sel)
    used = sel[~nan]
    return (float(used.mean()) if used.size else float("nan")), int(used.size), int(nan.sum())


def n_genes_above(r, threshold: float = 0.3) -> int:
    """Number of genes with ``r > threshold`` (strictly; NaN genes never count)."""
    r = np.asarray(r, dtype=np.float64)
    return int(np.sum(r[~np.isnan(r)] > threshold))


def _correlation_matrix(a: np.ndarray) -> np.ndarray:
    """``(G, G)`` Pearson correlation between the columns of ``a`` (no column may be constant)."""
    z = a - a.mean(0)
    z /= np.sqrt((z * z).sum(0))
    return z.T @ z


def gene_gene_correlation_preservation(pred, true) -> float:
    """How well the prediction keeps the gene–gene co-expression structure of the truth.

    ``corr(upper(C_pred), upper(C_true))`` where ``C = corrcoef(genes)`` is the ``(G, G)`` gene–gene Pearson
    matrix across spots and ``upper`` its strict upper triangle (``G(G−1)/2`` pairs). Genes constant on
    either side have no correlations and are dropped first. NaN when fewer than 3 genes remain (fewer than
    two pairs) or either triangle is constant. 1 when ``pred == true``.
    """
    pred, true = _check_pair(pred, true)
    keep = ~(constant_columns(pred) | constant_columns(true))
    g = int(keep.sum())
    if g < 3:
        return float("nan")
    upper = np.triu(np.ones((g, g), dtype=bool), k=1)
    a = _correlation_matrix(pred[:, keep])[upper]
    b = _correlation_matrix(true[:, keep])[upper]
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.clip(np.corrcoef(a, b)[0, 1], -1.0, 1.0))


def variance_ratio(pred, true) -> np.ndarray:
    """Per-gene ``var(pred) / var(true)`` across spots → ``(G,)``; NaN where the truth is constant.

    kNN averaging shrinks variance: values well below 1 mean over-smoothed predictions (a constant
    prediction gives 0).
    """
    pred, true = _check_pair(pred, true)
    vt = true.var(0)
    out = np.full(pred.shape[1], np.nan)
    ok = ~constant_columns(true) & (vt > 0)
    out[ok] = pred.var(0)[ok] / vt[ok]
    return out


def median_variance_ratio(pred, true) -> float:
    """Median of :func:`variance_ratio` over the genes where it is defined (NaN if none, without warning)."""
    ratio = variance_ratio(pred, true)
    ratio = ratio[~np.isnan(ratio)]
    return float(np.median(ratio)) if ratio.size else float("nan")
