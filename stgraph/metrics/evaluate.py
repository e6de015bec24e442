"""All metrics of one prediction at once, from arrays or AnnData."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd

from .correlation import (gene_gene_correlation_preservation, gene_sets, mean_pearson, median_variance_ratio,
                          n_genes_above, pearson_per_gene)
from .errors import mae, mse, rmse, rmse_zscore
from .ranking import hit_at_t
from .ssim import mean_ssim
from ..registry import Registry

__all__ = ["METRICS", "evaluate_arrays", "evaluate_prediction", "per_gene_table", "align_prediction"]


#: name → ``fn(pred, true, ctx) -> {column: value}`` over dense (n_spots, G) float64 arrays; ``ctx`` holds
#: ``genes``, ``r`` (per-gene Pearson), ``sets`` (gene sets), ``n_top``, ``hit_t``. Every registered metric
#: is a column group of :func:`evaluate_arrays` (registration order = column order); a new metric is one
#: decorated function (``@METRICS.register("name")``).
METRICS: Registry = Registry("metric")


@METRICS.register("pearson")
def _pearson(pred, true, ctx) -> dict:
    r, sets, n_top = ctx["r"], ctx["sets"], ctx["n_top"]
    index = {g: i for i, g in enumerate(ctx["genes"])}

    def mean_over(key: str) -> float:
        if key not in sets or not sets[key]:
            return float("nan")
        return mean_pearson(r, [index[g] for g in sets[key]])[0]

    return {
        "pcc_acg": mean_pearson(r)[0],
        f"pcc_heg{n_top}": mean_over("HEG"),
        f"pcc_hvg{n_top}": mean_over("HVG"),
        "pcc_mg": mean_over("MG"),
        "n_nan_genes": int(np.isnan(r).sum()),
        "n_genes": len(ctx["genes"]),
        "n_r_gt_0.3": n_genes_above(r, 0.3),
    }


def _array_metric(name: str, fn) -> None:
    """Register ``fn(pred, true) -> float`` as the one-column metric ``name``."""
    METRICS.register(name, lambda pred, true, ctx: {name: fn(pred, true)})


for _name, _fn in (("mse", mse), ("mae", mae), ("rmse", rmse), ("rmse_z", rmse_zscore), ("ssim", mean_ssim)):
    _array_metric(_name, _fn)


@METRICS.register("hit_at_t")
def _hit_at_t(pred, true, ctx) -> dict:
    return {f"hit_at_{ctx['hit_t']}": hit_at_t(pred, true, t=ctx["hit_t"])}


_array_metric("gg_corr", gene_gene_correlation_preservation)
_array_metric("var_ratio_median", median_variance_ratio)


def evaluate_arrays(pred, true, gene_names: Sequence[str], markers: Optional[Sequence[str]] = None,
                    n_top: int = 50, hit_t: int = 10) -> dict:
    """Every registered metric (:data:`METRICS`) for one prediction (flat, JSON-serialisable).

    Keys: ``pcc_acg``, ``pcc_heg50``, ``pcc_hvg50``, ``pcc_mg`` (mean Pearson over all genes / top-``n_top``
    by mean / by variance of the truth / markers; NaN genes excluded), ``n_nan_genes`` (constant genes
    excluded from the means), ``n_genes``, ``n_r_gt_0.3``, ``mse``, ``mae``, ``rmse``, ``rmse_z``, ``ssim``,
    ``hit_at_{t}``, ``gg_corr`` (gene–gene correlation preservation), ``var_ratio_median``.
    The Pearson keys are NaN for a prediction that is constant across spots (e.g. a mean-profile baseline).
    """
    pred = np.asarray(pred.toarray() if hasattr(pred, "toarray") else pred, dtype=np.float64)
    true = np.asarray(true.toarray() if hasattr(true, "toarray") else true, dtype=np.float64)
    names = list(map(str, gene_names))
    ctx = {"genes": names, "r": pearson_per_gene(pred, true), "sets": gene_sets(true, names, n=n_top, markers=markers),
           "n_top": n_top, "hit_t": hit_t}
    out: dict = {}
    for _, metric in METRICS.items():
        out.update(metric(pred, true, ctx))
    return out


def align_prediction(pred_adata, true_adata) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(pred, true, genes) over the predicted genes the truth measured and the spots both share (by name).

    A predicted gene the true slide did not measure has no truth: it is left out of the score, with a
    warning that counts them (slides of one study often carry different gene panels). Raises
    ``ValueError`` when no gene or no spot is shared.
    """
    import warnings

    measured = set(map(str, true_adata.var_names))
    genes = [g for g in map(str, pred_adata.var_names) if g in measured]
    missing = pred_adata.n_vars - len(genes)
    if not genes:
        raise ValueError("the true slide measured none of the predicted genes (var_names)")
    if missing:
        unmeasured = [g for g in map(str, pred_adata.var_names) if g not in measured]
        warnings.warn(f"{missing} predicted gene(s) not measured on the true slide are not scored: "
                      f"{', '.join(unmeasured[:10])}{' …' if missing > 10 else ''}", UserWarning, stacklevel=2)
    spots = [s for s in pred_adata.obs_names if s in set(true_adata.obs_names)]
    if not spots:
        raise ValueError("the prediction and the true slide share no spot (obs_names)")
    p = pred_adata[spots, genes].X
    t = true_adata[spots, genes].X
    dense = lambda m: np.asarray(m.toarray() if hasattr(m, "toarray") else m)  # noqa: E731
    return dense(p), dense(t), genes


def evaluate_prediction(pred_adata, true_adata, markers: Optional[Sequence[str]] = None, n_top: int = 50,
                        hit_t: int = 10) -> dict:
    """:func:`evaluate_arrays` on two AnnData (``true_adata.X`` must already be on the prediction's scale,
    e.g. log-normalised), aligned by gene and spot names; ``n_genes_unmeasured`` counts the predicted genes
    the true slide did not measure (not scored)."""
    pred, true, genes = align_prediction(pred_adata, true_adata)
    out = evaluate_arrays(pred, true, genes, markers=markers, n_top=n_top, hit_t=hit_t)
    out["n_genes_unmeasured"] = int(pred_adata.n_vars - len(genes))
    return out


def per_gene_table(pred, true, gene_names: Sequence[str], n_top: int = 50) -> pd.DataFrame:
    """One row per gene: ``gene``, ``pearson``, ``mean_true``, ``var_true``, ``in_heg``, ``in_hvg``."""
    true_a = np.asarray(true, dtype=np.float64)
    names = list(map(str, gene_names))
    sets = gene_sets(true_a, names, n=n_top)
    return pd.DataFrame({
        "gene": names,
        "pearson": pearson_per_gene(pred, true_a),
        "mean_true": true_a.mean(0),
        "var_true": true_a.var(0),
        "in_heg": [g in set(sets["HEG"]) for g in names],
        "in_hvg": [g in set(sets["HVG"]) for g in names],
    })
