"""Fold summaries, Markdown tables and atomic result files."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import pandas as pd

from ..utils.io import atomic_path

__all__ = ["summarize_folds", "to_markdown_table", "write_json_atomic", "write_csv_atomic"]

_ID_COLUMNS = ("method", "fold", "seed")


def _metric_columns(frame: pd.DataFrame) -> list[str]:
    """Numeric, non-boolean columns other than ``method``/``fold``; object columns holding only numbers and
    ``None`` (rows read back from JSON, where NaN was written as null) count as numeric."""
    out = []
    for col in frame.columns:
        if col in _ID_COLUMNS or pd.api.types.is_bool_dtype(frame[col]):
            continue
        if pd.api.types.is_numeric_dtype(frame[col]):
            out.append(col)
        elif frame[col].dtype == object:
            values = frame[col].dropna()
            if len(values) == 0 or all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
                                       for v in values):
                out.append(col)
    return out


def summarize_folds(rows: Union[pd.DataFrame, Sequence[dict]]) -> pd.DataFrame:
    """Mean and sample sd (``ddof=1``) over folds of every numeric metric, per method.

    Parameters
    ----------
    rows
        One row per (method, fold): a DataFrame or a list of dicts with a ``method`` column (``fold`` is
        optional and never summarised). NaN values (undefined metrics) are skipped. With a ``seed``
        column (several training seeds per fold), each fold's seed mean counts once.

    Returns
    -------
    pandas.DataFrame
        Indexed by method (first-appearance order), columns ``(metric, 'mean')``, ``(metric, 'sd')`` for each
        metric in column order, and ``('n_folds', '')``. ``sd`` is NaN for a single fold.
    """
    frame = pd.DataFrame(list(rows) if not isinstance(rows, pd.DataFrame) else rows)
    if "method" not in frame.columns:
        raise ValueError(f"fold rows need a 'method' column; got columns {list(frame.columns)}")
    metrics = _metric_columns(frame)
    if "seed" in frame.columns and "fold" in frame.columns:
        # Several training seeds per fold: each fold counts once, with its seed mean.
        values = frame[metrics].apply(pd.to_numeric, errors="coerce").astype(float)
        values = values.groupby([frame["method"], frame["fold"]], sort=False).mean().reset_index()
        frame = values
        values = values[metrics]
    else:
        values = frame[metrics].apply(pd.to_numeric, errors="coerce").astype(float)
    grouped = values.groupby(frame["method"], sort=False)
    summary = pd.concat({"mean": grouped.mean(), "sd": grouped.std(ddof=1)}, axis=1).swaplevel(axis=1)
    summary = summary.reindex(columns=pd.MultiIndex.from_product([metrics, ["mean", "sd"]]))
    summary[("n_folds", "")] = frame.groupby("method", sort=False).size()
    summary.index.name = "method"
    return summary


def _format_number(value, floatfmt: str) -> str:
    if value is None or (isinstance(value, (float, np.floating)) and not math.isfinite(value)):
        return "nan"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    try:
        return format(float(value), floatfmt)
    except (TypeError, ValueError):
        return str(value)


def _escape(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown_table(df: pd.DataFrame, metrics: Sequence[str], floatfmt: str = ".3f") -> str:
    """A GitHub Markdown table, one row per index entry (method), one column per metric.

    Parameters
    ----------
    df
        Either the output of :func:`summarize_folds` (cells become ``mean ± sd``, just ``mean`` when the sd is
        undefined, ``nan`` when the mean is) or a flat DataFrame (cells are its values).
    metrics
        Metric names, in column order.
    floatfmt
        ``format`` spec for the numbers.

    Returns
    -------
    str
        Header ``| method | m1 | … |``, rule ``| --- | --- | … |``, then one line per row; no trailing newline.
    """
    metrics = list(metrics)
    nested = isinstance(df.columns, pd.MultiIndex)
    available = set(df.columns.get_level_values(0)) if nested else set(df.columns)
    missing = [m for m in metrics if m not in available]
    if missing:
        raise KeyError(f"metric(s) {missing} are not in the table (columns: {sorted(map(str, available))})")

    def cell(row, metric: str) -> str:
        if not nested:
            return _format_number(df.loc[row, metric], floatfmt)
        mean = df.loc[row, (metric, "mean")]
        sd = df.loc[row, (metric, "sd")] if (metric, "sd") in df.columns else None
        text = _format_number(mean, floatfmt)
        if text == "nan" or _format_number(sd, floatfmt) == "nan":
            return text
        return f"{text} ± {_format_number(sd, floatfmt)}"

    label = df.index.name or "method"
    lines = ["| " + " | ".join(_escape(c) for c in [label, *metrics]) + " |",
             "|" + " --- |" * (len(metrics) + 1)]
    for row in df.index:
        lines.append("| " + " | ".join([_escape(row), *(_escape(cell(row, m)) for m in metrics)]) + " |")
    return "\n".join(lines)


def _json_ready(obj):
    """Plain-Python copy of ``obj``: numpy scalars/arrays → numbers/lists, non-finite floats → ``None``,
    paths → strings."""
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_ready(obj.tolist())
    if isinstance(obj, np.generic):
        return _json_ready(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def _make_readable(tmp: Path) -> None:
    # mkstemp creates 0600 files; results are meant to be shared like any other output.
    os.chmod(tmp, 0o644)


def write_json_atomic(obj, path: Union[str, os.PathLike]) -> Path:
    """Write ``obj`` as indented, strictly valid JSON (NaN/inf → ``null``) to ``path`` atomically.

    Returns the path. ``TypeError`` names the offending type for objects JSON cannot hold.
    """
    text = json.dumps(_json_ready(obj), indent=2, allow_nan=False) + "\n"
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
        _make_readable(tmp)
    return path


def write_csv_atomic(df: pd.DataFrame, path: Union[str, os.PathLike], index: bool = False) -> Path:
    """Write ``df`` as CSV to ``path`` atomically (without the index unless ``index=True``); returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=index)
        _make_readable(tmp)
    return path
