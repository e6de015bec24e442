"""Training plots."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional, Union

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

__all__ = ["plot_loss_curves", "save_figure"]


def save_figure(fig, path: Union[str, os.PathLike], dpi: int = 120) -> Path:
    """Save ``fig`` as PNG atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def plot_loss_curves(log: Union[pd.DataFrame, str, os.PathLike], path: Optional[Union[str, os.PathLike]] = None):
    """One panel per loss term (``total`` first), train and validation curves over epochs.

    Parameters
    ----------
    log
        DataFrame or CSV path with columns ``epoch``, ``split`` (``train``/``val``) and one column per term.
    path
        Write the figure there as PNG (atomically).
    """
    frame = pd.read_csv(log) if not isinstance(log, pd.DataFrame) else log
    skip = {"epoch", "split", "seconds", "lr"}
    terms = [c for c in frame.columns if c not in skip and frame[c].notna().any()]
    terms = sorted(terms, key=lambda t: (t != "total", t))
    fig, axes = plt.subplots(1, len(terms), figsize=(3.2 * len(terms), 2.8), squeeze=False)
    for ax, term in zip(axes[0], terms):
        for split, style in (("train", "-"), ("val", "--")):
            part = frame[frame["split"] == split].dropna(subset=[term])
            if len(part):
                ax.plot(part["epoch"], part[term], style, label=split)
        ax.set_title(term)
        ax.set_xlabel("epoch")
    axes[0][0].set_ylabel("loss")
    axes[0][0].legend()
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig
