"""Training plots, and the atomic figure writer the other plot modules share."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import matplotlib.pyplot as plt
import pandas as pd

from ..utils.io import atomic_path

__all__ = ["plot_loss_curves", "save_figure"]

# Columns of the training log that are not loss terms.
_NOT_LOSSES = {"epoch", "split", "seconds", "lr", "step", "time"}


def save_figure(fig, path: Union[str, os.PathLike], dpi: int = 120) -> Path:
    """Save ``fig`` to ``path`` atomically (temporary file in the same folder, then ``os.replace``).

    The format follows the suffix (``.png`` when there is none). Returns the path.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    # PNGs say who wrote them: `--force` replaces only a figure stgraph wrote (utils.io.is_stgraph_output).
    metadata = {"Software": "stgraph"} if fmt == "png" else None
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight", metadata=metadata)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
    return path


def _read_log(log: Union[pd.DataFrame, str, os.PathLike]) -> tuple[pd.DataFrame, str]:
    if isinstance(log, pd.DataFrame):
        return log, "the training log"
    source = Path(log)
    if not source.is_file():
        raise FileNotFoundError(f"training log not found: {source}")
    return pd.read_csv(source), str(source)


def plot_loss_curves(log: Union[pd.DataFrame, str, os.PathLike], path: Optional[Union[str, os.PathLike]] = None):
    """One panel per loss term (``total`` first, then alphabetical): train (solid) and val (dashed) over epochs.

    Parameters
    ----------
    log
        DataFrame or CSV path with columns ``epoch``, ``split`` (``train``/``val``) and one numeric column per
        loss term (``seconds``, ``lr``, ``step``, ``time`` are ignored). Terms logged for one split only (NaN
        in the other) are drawn for that split.
    path
        Write the figure there (PNG unless the suffix says otherwise), atomically.

    Returns
    -------
    matplotlib.figure.Figure
        ``1 × n_terms`` axes.
    """
    frame, source = _read_log(log)
    missing = [c for c in ("epoch", "split") if c not in frame.columns]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; has {list(frame.columns)}")
    terms = [c for c in frame.columns if c not in _NOT_LOSSES and pd.api.types.is_numeric_dtype(frame[c])
             and frame[c].notna().any()]
    if not terms:
        raise ValueError(f"{source}: no numeric loss column besides {sorted(_NOT_LOSSES)}")
    terms = sorted(terms, key=lambda t: (t != "total", t))
    fig, axes = plt.subplots(1, len(terms), figsize=(3.2 * len(terms), 2.8), squeeze=False)
    for ax, term in zip(axes[0], terms):
        for split, style in (("train", "-"), ("val", "--")):
            part = frame[frame["split"] == split].dropna(subset=[term]).sort_values("epoch")
            if len(part):
                ax.plot(part["epoch"], part[term], style, marker="." if len(part) < 20 else None, label=split)
        ax.set_title(term)
        ax.set_xlabel("epoch")
    axes[0][0].set_ylabel("loss")
    axes[0][0].legend()
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig
