"""Benchmark plots."""
from __future__ import annotations

import os
from typing import Optional, Union

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .training import save_figure

__all__ = ["plot_fold_pcc"]


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
        One axes; methods in first-appearance order; a method whose metric is undefined on every fold is
        shown empty and labelled ``n/a``.
    """
    missing = [c for c in ("method", metric) if c not in df.columns]
    if missing:
        raise KeyError(f"the results have no column(s) {missing}; columns: {list(df.columns)}")
    if df.empty:
        raise ValueError("no result rows to plot")
    methods = list(dict.fromkeys(df["method"]))
    data = [pd.to_numeric(df.loc[df["method"] == m, metric], errors="coerce").dropna().to_numpy() for m in methods]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(methods) + 1.5), 3.6))
    positions = np.arange(1, len(methods) + 1)
    shown = [i for i, d in enumerate(data) if len(d)]
    if shown:
        ax.boxplot([data[i] for i in shown], positions=positions[shown], widths=0.55, showfliers=False)
    rng = np.random.default_rng(0)
    for i, d in enumerate(data):
        if len(d):
            ax.scatter(positions[i] + rng.uniform(-0.12, 0.12, len(d)), d, s=14, alpha=0.8, zorder=3)
        else:
            ax.text(positions[i], 0.5, "n/a", ha="center", va="center", transform=ax.get_xaxis_transform())
    ax.set_xticks(positions)
    ax.set_xticklabels(methods, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_title(f"{metric} per fold")
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig
