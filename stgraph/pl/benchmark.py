"""Benchmark plots."""
from __future__ import annotations

import os
import re
from typing import Optional, Union

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .training import save_figure

__all__ = ["plot_fold_pcc", "metric_label"]

#: Metric keys of :func:`stgraph.metrics.evaluate_arrays` in words.
_LABELS = {
    "pcc_acg": "mean Pearson r, all genes",
    "pcc_mg": "mean Pearson r, marker genes",
    "n_r_gt_0.3": "genes with Pearson r > 0.3",
    "mse": "mean squared error",
    "mae": "mean absolute error",
    "rmse": "root mean squared error",
    "rmse_z": "root mean squared error of z-scores",
    "ssim": "structural similarity (SSIM)",
    "gg_corr": "gene–gene correlation preserved",
    "var_ratio_median": "median predicted / true variance",
}
_PATTERNS = (
    (r"pcc_heg(\d+)", "mean Pearson r, {} most expressed genes"),
    (r"pcc_hvg(\d+)", "mean Pearson r, {} most variable genes"),
    (r"hit_at_(\d+)", "Hit@{}"),
)


def metric_label(metric: str) -> str:
    """A metric key in words: ``pcc_heg50`` → ``mean Pearson r, 50 most expressed genes``."""
    if metric in _LABELS:
        return _LABELS[metric]
    for pattern, text in _PATTERNS:
        m = re.fullmatch(pattern, metric)
        if m:
            return text.format(m.group(1))
    return metric


def plot_fold_pcc(df: pd.DataFrame, metric: str = "pcc_acg", path: Optional[Union[str, os.PathLike]] = None):
    """Box plot of a per-fold metric per method, with each fold as a dot.

    Parameters
    ----------
    df
        One row per (method, fold): columns ``method`` and ``metric`` (NaN = undefined on that fold).
    metric
        Column to plot.
    path
        Write the figure there (PNG unless the suffix says otherwise), atomically.

    Returns
    -------
    matplotlib.figure.Figure
        One axes titled with the metric in words (:func:`metric_label`); methods in first-appearance order.
        A method whose metric is undefined on every fold (e.g. Pearson r of a constant prediction) gets no
        column; a note under the axes names it.
    """
    missing = [c for c in ("method", metric) if c not in df.columns]
    if missing:
        raise KeyError(f"the results have no column(s) {missing}; columns: {list(df.columns)}")
    if df.empty:
        raise ValueError("no result rows to plot")
    methods = list(dict.fromkeys(df["method"]))
    data = [pd.to_numeric(df.loc[df["method"] == m, metric], errors="coerce").dropna().to_numpy() for m in methods]
    undefined = [m for m, d in zip(methods, data) if not len(d)]
    kept = [(m, d) for m, d in zip(methods, data) if len(d)]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(kept) + 1.5), 3.8))
    positions = np.arange(1, len(kept) + 1)
    if kept:
        ax.boxplot([d for _, d in kept], positions=positions, widths=0.55, showfliers=False)
    rng = np.random.default_rng(0)
    for pos, (_, d) in zip(positions, kept):
        ax.scatter(pos + rng.uniform(-0.12, 0.12, len(d)), d, s=14, alpha=0.8, zorder=3)
    ax.set_xticks(positions)
    ax.set_xticklabels([m for m, _ in kept], rotation=35, ha="right", fontsize=8)
    label = metric_label(metric)
    ax.set_ylabel(label, fontsize=8)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_title(f"{label[0].upper()}{label[1:]}, per held-out section", fontsize=10)
    if undefined:
        fig.text(0.01, 0.01, f"undefined on every fold (not shown): {', '.join(undefined)}", fontsize=7,
                 color="grey", ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.04 if undefined else 0, 1, 1))
    if path is not None:
        save_figure(fig, path)
    return fig
