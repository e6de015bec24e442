"""Fold summaries, Markdown tables and atomic result files."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import pandas as pd

__all__ = ["summarize_folds", "to_markdown_table", "write_json_atomic", "write_csv_atomic"]


def summarize_folds(rows: Union[pd.DataFrame, Sequence[dict]]) -> pd.DataFrame:
    """Mean and sd over folds of every numeric metric, per method.

    Returns a DataFrame indexed by method with columns ``(metric, 'mean')``, ``(metric, 'sd')`` and
    ``n_folds``; methods keep their first-appearance order.
    """
    frame = pd.DataFrame(rows)
    if "method" not in frame:
        raise ValueError("rows need a 'method' column")
    numeric = [c for c in frame.columns if c not in ("method", "fold") and pd.api.types.is_numeric_dtype(frame[c])]
    grouped = frame.groupby("method", sort=False)[numeric]
    summary = pd.concat({"mean": grouped.mean(), "sd": grouped.std(ddof=1)}, axis=1).swaplevel(axis=1)
    summary = summary.sort_index(axis=1, level=0, sort_remaining=False)
    summary["n_folds"] = frame.groupby("method", sort=False).size()
    return summary


def to_markdown_table(summary: pd.DataFrame, metrics: Sequence[str], floatfmt: str = ".3f") -> str:
    """A Markdown table, one row per method, cells ``mean ± sd`` (``nan`` where undefined)."""
    def cell(mean: float, sd: float) -> str:
        if mean is None or not np.isfinite(mean):
            return "nan"
        text = format(mean, floatfmt)
        return f"{text} ± {format(sd, floatfmt)}" if sd is not None and np.isfinite(sd) else text

    head = "| method | " + " | ".join(metrics) + " |"
    rule = "| --- |" + " --- |" * len(metrics)
    lines = [head, rule]
    for method in summary.index:
        cells = [cell(summary.loc[method, (m, "mean")], summary.loc[method, (m, "sd")]) for m in metrics]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _atomic_write(path: Union[str, os.PathLike], write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_json_atomic(obj, path) -> Path:
    """JSON (NaN written as null) to ``path`` atomically."""
    def clean(o):
        if isinstance(o, float) and not np.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        if isinstance(o, np.generic):
            return clean(o.item())
        return o

    return _atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(clean(obj), indent=2)))


def write_csv_atomic(frame: pd.DataFrame, path) -> Path:
    """CSV to ``path`` atomically."""
    return _atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))
