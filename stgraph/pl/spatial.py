"""Spatial maps of gene expression over the H&E image."""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import matplotlib.pyplot as plt
import numpy as np

from ..metrics.correlation import pearson_per_gene
from .training import save_figure
from ..keys import Key

__all__ = ["plot_genes", "slide_image"]


def _library_id(adata, library_id: Optional[str]) -> Optional[str]:
    """The ``uns['spatial']`` entry to use: the given one, else the slide's own ``obs['slide_id']`` when it has
    a single one, else the first entry."""
    spatial = adata.uns.get(Key.uns.spatial, {}) if hasattr(adata, "uns") else {}
    if not spatial:
        if library_id is not None:
            raise KeyError(f"library {library_id!r} requested but the data has no uns['spatial']")
        return None
    if library_id is not None:
        if library_id not in spatial:
            raise KeyError(f"library {library_id!r} not in uns['spatial'] (has {list(spatial)})")
        return library_id
    if "slide_id" in getattr(adata, "obs", {}):
        ids = list(dict.fromkeys(map(str, adata.obs[Key.obs.slide_id])))
        if len(ids) == 1 and ids[0] in spatial:
            return ids[0]
    return next(iter(spatial))


def slide_image(adata, library_id: Optional[str] = None) -> tuple[Optional[np.ndarray], float]:
    """The background image of a slide and the factor from full-resolution pixels to its pixels.

    Follows the AnnData slide convention: ``uns['spatial'][library_id]['images']`` — ``hires`` with
    ``scalefactors['tissue_hires_scalef']``, else ``lowres`` with ``tissue_lowres_scalef``, else ``fullres``
    with ``tissue_fullres_scalef`` (1 when absent). ``obsm['spatial'] * scale`` are pixel positions in the
    returned image.

    Returns
    -------
    (image, scale)
        ``image`` (H, W, 3 or 4) or ``(None, 1.0)`` when the slide has no image in memory.
    """
    lib = _library_id(adata, library_id)
    if lib is None:
        return None, 1.0
    entry = adata.uns[Key.uns.spatial][lib]
    images, factors = entry.get(Key.uns.images, {}) or {}, entry.get(Key.uns.scalefactors, {}) or {}
    for name in ("hires", "lowres"):
        if name in images and f"tissue_{name}_scalef" in factors:
            return np.asarray(images[name]), float(factors[f"tissue_{name}_scalef"])
    if "fullres" in images:
        return np.asarray(images[Key.image.fullres]), float(factors.get(Key.scalefactor.fullres, 1.0))
    return None, 1.0


def _values(adata, gene: str) -> np.ndarray:
    col = adata[:, gene].X
    return np.asarray(col.toarray() if hasattr(col, "toarray") else col, dtype=np.float64).ravel()


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(pearson_per_gene(a[:, None], b[:, None])[0])


def _median_spacing(xy: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    if len(xy) < 2:
        return 1.0
    return float(np.median(cKDTree(xy).query(xy, k=2)[0][:, 1])) or 1.0


def _auto_spot_size(xy: np.ndarray, panel_points: float = 300.0) -> float:
    """Marker area (points²) so that neighbouring spots nearly touch in a ~4 inch panel spanning the spots."""
    if len(xy) < 2:
        return 30.0
    extent = float(max(np.ptp(xy[:, 0]), np.ptp(xy[:, 1]), 1e-9))
    diameter = 0.8 * panel_points * _median_spacing(xy) / extent
    return float(np.clip(diameter ** 2, 2.0, 400.0))


def _matched(adata_pred, adata_true):
    """Both AnnData restricted to their shared spots, in the prediction's order."""
    known = set(adata_true.obs_names)
    common = [s for s in adata_pred.obs_names if s in known]
    if not common:
        raise ValueError("the prediction and the true slide share no spot (obs_names differ)")
    return adata_pred[common], adata_true[common]


def plot_genes(adata_pred, genes: Sequence[str], adata_true=None, image=None,
               path: Optional[Union[str, os.PathLike]] = None, spot_size: Optional[float] = None,
               cmap: str = "viridis", shared_scale: bool = True, library_id: Optional[str] = None,
               alpha: Optional[float] = None, units: str = "log1p normalised expression"):
    """One row per gene: predicted values (and the truth, when given) as coloured spots over the H&E.

    Parameters
    ----------
    adata_pred
        Prediction AnnData: ``X`` (n_spots, G), ``obsm['spatial']`` spot centres in full-resolution pixels,
        the image in ``uns['spatial']`` (see :func:`slide_image`).
    genes
        Genes to draw (rows of the figure).
    adata_true
        Optional AnnData with the true values (drawn as they are, so give them on the prediction's scale),
        matched to the prediction by spot name; its image is used when the prediction has none.
    image
        Background image overriding ``uns['spatial']``, in full-resolution pixel coordinates (scale 1).
    path
        Write the figure there (PNG unless the suffix says otherwise), atomically.
    spot_size
        Marker area in points²; by default spots nearly touch.
    cmap
        Matplotlib colour map.
    shared_scale
        One colour range per gene, [min, max] over its predicted and true panels (default), so equal colours
        mean equal values. ``False``: each panel its own range (the spatial *pattern*, what Pearson r
        measures; predictions are smoother than the truth), stated in the colour bar label.
    library_id
        ``uns['spatial']`` entry to take the image from (default: the slide's own, else the first).
    alpha
        Spot opacity; default 0.75 over an image (the tissue shows through), 1 without one.
    units
        Colour bar label (the values' unit).

    Returns
    -------
    matplotlib.figure.Figure
        ``len(genes) × (1 or 2)`` map axes (one labelled colour bar each). The predicted panel's title reads
        ``"<gene> predicted (Pearson r = 0.42)"`` when the truth is given.
    """
    genes = [str(g) for g in genes]
    if not genes:
        raise ValueError("no gene to plot")
    for name, ad in (("prediction", adata_pred), ("truth", adata_true)):
        if ad is None:
            continue
        missing = [g for g in genes if g not in ad.var_names]
        if missing:
            raise KeyError(f"gene(s) {missing} are not in the {name} ({ad.n_vars} genes)")
    if Key.obsm.spatial not in adata_pred.obsm:
        raise KeyError("the prediction has no obsm['spatial'] spot coordinates")

    if image is not None:
        img, scale = np.asarray(image), 1.0
    else:
        img, scale = slide_image(adata_pred, library_id)
        if img is None and adata_true is not None:
            img, scale = slide_image(adata_true, library_id)
    pred, true = (adata_pred, None) if adata_true is None else _matched(adata_pred, adata_true)
    xy = np.asarray(pred.obsm[Key.obsm.spatial], dtype=np.float64) * scale
    if spot_size is None:
        spot_size = _auto_spot_size(xy)
    margin = _median_spacing(xy)
    if alpha is None:
        alpha = 0.75 if img is not None else 1.0
    bar_label = units if shared_scale or true is None else f"{units} (own range per panel)"

    ncols = 1 if true is None else 2
    fig, axes = plt.subplots(len(genes), ncols, figsize=(4.2 * ncols, 4.0 * len(genes)), squeeze=False)
    for row, gene in enumerate(genes):
        panels = [("predicted", _values(pred, gene))]
        if true is not None:
            panels.append(("true", _values(true, gene)))
        lo = min(v.min() for _, v in panels) if shared_scale else None
        hi = max(v.max() for _, v in panels) if shared_scale else None
        for col, (label, values) in enumerate(panels):
            ax = axes[row][col]
            if img is not None:
                ax.imshow(img)
            dots = ax.scatter(xy[:, 0], xy[:, 1], c=values, s=spot_size, cmap=cmap, vmin=lo, vmax=hi,
                              edgecolors="none", alpha=alpha)
            # Show the tissue under the spots, not the whole slide; y grows downwards as in the image.
            ax.set_xlim(xy[:, 0].min() - margin, xy[:, 0].max() + margin)
            ax.set_ylim(xy[:, 1].max() + margin, xy[:, 1].min() - margin)
            ax.set_aspect("equal")
            title = f"{gene} {label}"
            if label == "predicted" and true is not None:
                title += f" (Pearson r = {_pearson(panels[0][1], panels[1][1]):.2f})"
            ax.set_title(title, fontsize=10)
            ax.set_axis_off()
            bar = fig.colorbar(dots, ax=ax, fraction=0.046, pad=0.02)
            bar.set_label(bar_label, fontsize=8)
            bar.solids.set_alpha(1.0)  # the bar shows the colours, not the spots' transparency
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig
