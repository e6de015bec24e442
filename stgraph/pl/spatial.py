"""Spatial maps of gene expression over the H&E image."""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .training import save_figure  # noqa: E402

__all__ = ["plot_genes", "slide_image"]


def slide_image(adata) -> tuple[Optional[np.ndarray], float]:
    """(image, scale) from ``uns['spatial']``: ``hires`` with ``tissue_hires_scalef``, else ``lowres``, else
    ``fullres`` (scale 1). ``(None, 1.0)`` without an image. ``obsm['spatial'] * scale`` are image pixels."""
    spatial = adata.uns.get("spatial", {}) if hasattr(adata, "uns") else {}
    for entry in spatial.values():
        images, sf = entry.get("images", {}), entry.get("scalefactors", {})
        for name in ("hires", "lowres"):
            if name in images and f"tissue_{name}_scalef" in sf:
                return np.asarray(images[name]), float(sf[f"tissue_{name}_scalef"])
        if "fullres" in images:
            return np.asarray(images["fullres"]), float(sf.get("tissue_fullres_scalef", 1.0))
    return None, 1.0


def _values(adata, gene: str) -> np.ndarray:
    if gene not in adata.var_names:
        raise KeyError(f"gene {gene!r} is not in the data ({adata.n_vars} genes)")
    col = adata[:, gene].X
    return np.asarray(col.toarray() if hasattr(col, "toarray") else col).ravel()


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _auto_spot_size(xy: np.ndarray, panel_points: float = 300.0) -> float:
    """Marker area (points²) so that neighbouring spots nearly touch in a ~4 inch panel."""
    from scipy.spatial import cKDTree

    if len(xy) < 2:
        return 30.0
    spacing = float(np.median(cKDTree(xy).query(xy, k=2)[0][:, 1]))
    extent = float(max(np.ptp(xy[:, 0]), np.ptp(xy[:, 1]), 1e-9))
    diameter = 0.7 * panel_points * spacing / extent
    return float(np.clip(diameter ** 2, 2.0, 400.0))


def plot_genes(adata_pred, genes: Sequence[str], adata_true=None, image=None,
               path: Optional[Union[str, os.PathLike]] = None, spot_size: Optional[float] = None,
               cmap: str = "viridis"):
    """One row per gene: predicted values (and the truth, when given) as coloured spots over the H&E.

    Parameters
    ----------
    adata_pred
        Prediction AnnData (``obsm['spatial']`` in full-resolution pixels; image in ``uns['spatial']``).
    genes
        Genes to draw.
    adata_true
        Optional AnnData with the true values to plot as they are, matched to the prediction by spot name.
    image
        Override the background image (drawn at scale 1).
    path
        Write a PNG there (atomically).
    """
    genes = list(genes)
    img, scale = (image, 1.0) if image is not None else slide_image(adata_pred)
    if img is None and adata_true is not None:
        img, scale = slide_image(adata_true)
    xy = np.asarray(adata_pred.obsm["spatial"], dtype=float) * scale
    true = None
    if adata_true is not None:
        common = [s for s in adata_pred.obs_names if s in set(adata_true.obs_names)]
        if not common:
            raise ValueError("the prediction and the true slide share no spot (obs_names)")
        true = adata_true[common]
        pred = adata_pred[common]
        xy = np.asarray(pred.obsm["spatial"], dtype=float) * scale
    else:
        pred = adata_pred
    ncols = 2 if true is not None else 1
    fig, axes = plt.subplots(len(genes), ncols, figsize=(4.2 * ncols, 4.0 * len(genes)), squeeze=False)
    if spot_size is None:
        spot_size = _auto_spot_size(xy)
    for row, gene in enumerate(genes):
        pv = _values(pred, gene)
        panels = [("predicted", pv)]
        if true is not None:
            tv = _values(true, gene)
            panels.append(("true", tv))
        vmin = min(p[1].min() for p in panels)
        vmax = max(p[1].max() for p in panels)
        for col, (label, values) in enumerate(panels):
            ax = axes[row][col]
            if img is not None:
                ax.imshow(img)
            sc = ax.scatter(xy[:, 0], xy[:, 1], c=values, s=spot_size, cmap=cmap, vmin=vmin, vmax=vmax,
                            edgecolors="none", alpha=0.9)
            title = f"{gene} {label}" if true is not None else gene
            if label == "predicted" and true is not None:
                title += f" (r = {_pearson(pv, tv):.2f})"
            ax.set_title(title, fontsize=10)
            ax.set_axis_off()
            if img is None:
                ax.invert_yaxis()
                ax.set_aspect("equal")
            fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.02)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig
