"""Seed-aware summaries of cross-validation rows: seed means per fold, and paired ablation differences.

A cross-validation with several training seeds gives one row per (method, fold, seed). Two sources of
variation are mixed in such rows: the held-out section (folds differ by 0.03 ACG or more) and the training
seed (initial weights, batch order, dropout). The summaries here keep them apart:

- **Table cells** are the mean ± sd over folds of each fold's *seed mean*
  :math:`\\bar m_f = \\frac{1}{S}\\sum_s m_{f,s}`: the sd is the spread between sections, with the seed noise
  averaged down.
- **Ablation rows** are compared with their full model fold by fold, on the same sections:
  :math:`d_f = \\bar m^{\\text{ablation}}_f - \\bar m^{\\text{full}}_f`. The interval is Student's t over the
  F fold-level differences,

  .. math::
      \\bar d \\pm t_{F-1,\\,1-(1-c)/2}\\; \\frac{s_d}{\\sqrt{F}},

  where :math:`s_d` is the sample sd (``ddof=1``) of the :math:`d_f`. Each :math:`d_f` is itself a mean
  over the seeds of both models, so the interval covers both the fold-to-fold and the seed-to-seed
  variation (folds × seeds); pairing by fold removes the section difficulty that both models share.
  A difference whose interval covers 0 is reported as "no effect detected".
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd

__all__ = ["NO_EFFECT", "seed_means", "summarize_seeds", "paired_difference", "ablation_table",
           "ablation_pairs_by_name", "ablation_pairs_by_base", "format_difference"]

NO_EFFECT = "no effect detected"


def _seeded(frame: pd.DataFrame) -> pd.DataFrame:
    frame = pd.DataFrame(frame)
    for col in ("method", "fold"):
        if col not in frame.columns:
            raise ValueError(f"rows need a {col!r} column; got columns {list(frame.columns)}")
    if "seed" not in frame.columns:
        frame = frame.assign(seed=0)
    return frame


def seed_means(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean of ``metric`` over seeds for every (method, fold): a method × fold table (NaNs skipped).

    Shapes: rows (method, fold, seed) → DataFrame indexed by method (first-appearance order), one column
    per fold (first-appearance order).
    """
    frame = _seeded(frame)
    if metric not in frame.columns:
        raise KeyError(f"metric {metric!r} not in the rows (columns: {list(frame.columns)})")
    values = pd.to_numeric(frame[metric], errors="coerce").astype(float)
    table = values.groupby([frame["method"], frame["fold"]], sort=False).mean().unstack("fold")
    methods = list(dict.fromkeys(frame["method"]))
    folds = list(dict.fromkeys(frame["fold"]))
    return table.reindex(index=methods, columns=folds)


def summarize_seeds(frame: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Mean ± sd over folds of the fold-level seed means, per method.

    Returns the layout of :func:`stgraph.metrics.report.summarize_folds` (columns ``(metric, 'mean')``,
    ``(metric, 'sd')``, ``('n_folds', '')``) plus ``('n_seeds', '')``: the number of seeds per fold
    (the smallest, should a fold have fewer).
    """
    frame = _seeded(frame)
    metrics = [m for m in metrics if m in frame.columns]
    parts = {}
    for m in metrics:
        table = seed_means(frame, m)
        parts[(m, "mean")] = table.mean(axis=1, skipna=True)
        parts[(m, "sd")] = table.std(axis=1, ddof=1, skipna=True)
    summary = pd.DataFrame(parts)
    summary.columns = pd.MultiIndex.from_tuples(summary.columns)
    counts = frame.groupby(["method", "fold"], sort=False)["seed"].nunique()
    summary[("n_folds", "")] = counts.groupby(level="method", sort=False).size()
    summary[("n_seeds", "")] = counts.groupby(level="method", sort=False).min()
    summary.index.name = "method"
    return summary


def paired_difference(frame: pd.DataFrame, method: str, base: str, metric: str,
                      level: float = 0.95) -> dict:
    """``method − base`` on ``metric``: mean over folds of the fold-level seed-mean differences, with a
    Student-t interval over folds (module docstring).

    Only folds where both have a value are used. Returns ``{"diff", "lo", "hi", "sd", "n_folds", "effect"}``
    where ``effect`` is False when the interval covers 0 (and NaN bounds with fewer than 2 folds).
    """
    from scipy import stats

    if not 0 < level < 1:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    table = seed_means(frame, metric)
    for name in (method, base):
        if name not in table.index:
            raise KeyError(f"method {name!r} has no rows (methods: {list(table.index)})")
    d = (table.loc[method] - table.loc[base]).dropna().to_numpy(dtype=float)
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    if n < MIN_FOLDS_FOR_INTERVAL:
        # Two folds give a t-interval on one degree of freedom: wide, and too fragile to call an effect.
        return {"diff": mean, "lo": math.nan, "hi": math.nan, "sd": math.nan, "n_folds": n, "effect": False}
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf(1 - (1 - level) / 2, n - 1)) * sd / math.sqrt(n)
    lo, hi = mean - half, mean + half
    return {"diff": mean, "lo": lo, "hi": hi, "sd": sd, "n_folds": n, "effect": bool(lo > 0 or hi < 0)}


#: The fewest paired folds an interval (and any "effect") is given for.
MIN_FOLDS_FOR_INTERVAL = 3


def format_difference(result: Mapping, floatfmt: str = "+.3f") -> str:
    """``+0.012 [+0.004, +0.020]``, followed by "(no effect detected)" when the interval covers 0; with fewer
    than :data:`MIN_FOLDS_FOR_INTERVAL` paired folds, "too few folds for an interval"."""
    if not math.isfinite(result["lo"]):
        return (f"{result['diff']:{floatfmt}} (too few folds for an interval: {result['n_folds']}, at least "
                f"{MIN_FOLDS_FOR_INTERVAL} needed)")
    text = f"{result['diff']:{floatfmt}} [{result['lo']:{floatfmt}}, {result['hi']:{floatfmt}}]"
    return text if result["effect"] else f"{text} ({NO_EFFECT})"


def ablation_table(frame: pd.DataFrame, pairs: Mapping[str, str], metrics: Sequence[str],
                   level: float = 0.95) -> pd.DataFrame:
    """One row per ``ablation → full model`` pair with the formatted paired difference of each metric.

    ``pairs`` maps an ablation's method name to its full model's; pairs naming a method without rows are
    skipped. Columns: ``method``, ``vs``, then one per metric (strings from :func:`format_difference`).
    """
    present = set(_seeded(frame)["method"])
    rows = []
    for method, base in pairs.items():
        if method not in present or base not in present:
            continue
        row = {"method": method, "vs": base}
        for m in metrics:
            if m in frame.columns:
                row[m] = format_difference(paired_difference(frame, method, base, m, level))
        rows.append(row)
    return pd.DataFrame(rows)


def ablation_pairs_by_name(methods: Sequence[str], separators: str = "-+") -> dict[str, str]:
    """The naming rule of the benchmark scripts: ``stgraph-no_context_crop`` and ``stgraph+smoothing`` are
    ablations of ``stgraph`` when ``stgraph`` is among ``methods`` (the longest such prefix wins).

    Returns ``{ablation: full model}``.
    """
    names = list(methods)
    pairs: dict[str, str] = {}
    for name in names:
        best: Optional[str] = None
        for other in names:
            if other != name and name.startswith(other) and len(name) > len(other) \
                    and name[len(other)] in separators and (best is None or len(other) > len(best)):
                best = other
        if best is not None:
            pairs[name] = best
    return pairs



def ablation_pairs_by_base(config_paths: Mapping[str, object]) -> dict[str, str]:
    """``{method: path}`` → ``{ablation: full model}`` for every config whose ``base:`` file is another of the
    evaluated configs (``configs/ablations/stgchb_no_hsic.yaml`` → ``configs/stgchb.yaml``)."""
    from pathlib import Path

    from ..config.load import config_base
    from ..config.shipped import find_config

    by_path = {find_config(p).resolve(): name for name, p in config_paths.items()}
    pairs = {}
    for name, path in config_paths.items():
        base = config_base(path)
        if base is not None and base in by_path and by_path[base] != name:
            pairs[name] = by_path[base]
    return pairs
