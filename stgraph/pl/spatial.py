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


#: The unit of every expression map (stgraph.data.pp.EXPRESSION_UNITS, not imported: pl stays light).
UNITS = "log1p(counts per 10,000)"
#: Each map's colour range spans at least this share of the gene's usual range (its training 1st–99th
#: percentiles, or the truth's): a gene that hardly varies on this slide is drawn nearly flat, not as a vivid
#: pattern of noise.
MIN_SPAN = 0.25


def _robust_range(values: np.ndarray, usual: Optional[tuple[float, float]]) -> tuple[float, float]:
    """The 1st–99th percentile range of ``values``, widened about its centre to at least ``MIN_SPAN`` of the
    gene's ``usual`` range (and to a tiny width for a constant map)."""
    lo, hi = (float(v) for v in np.percentile(values, [1, 99]))
    span = MIN_SPAN * (usual[1] - usual[0]) if usual is not None and np.all(np.isfinite(usual)) else 0.0
    span = max(span, hi - lo, 1e-6)
    centre = (lo + hi) / 2
    lo, hi = centre - span / 2, centre + span / 2
    if lo < 0 <= (lo + hi) / 2 + span:  # expression is ≥ 0: keep the range above 0 when it can be
        lo, hi = 0.0, max(hi - lo, span)
    return lo, hi


def _var_value(adata, gene: str, key: str):
    if key in adata.var.columns:
        return adata.var.loc[gene, key]
    return None


def plot_genes(adata_pred, genes: Sequence[str], adata_true=None, image=None,
               path: Optional[Union[str, os.PathLike]] = None, spot_size: Optional[float] = None,
               cmap: str = "viridis", shared_scale: bool = False, library_id: Optional[str] = None,
               alpha: Optional[float] = None, units: str = UNITS, interval_width: bool = False):
    """One row per gene: predicted values (and the truth, when given) as coloured spots over the H&E.

    What the maps say, so that they tell the truth:

    * **colour scale**: each panel its own range (default), the 1st–99th percentiles of its values widened to at
      least :data:`MIN_SPAN` of the gene's usual range (its training 1st–99th percentiles from the run's trust
      record, else the truth's). Predictions are shrunk towards the mean: on the truth's scale a good map would
      look flat, so each panel shows its own *pattern* (what Pearson r measures); a gene that hardly varies is
      drawn nearly flat rather than stretched into a vivid pattern of noise. ``shared_scale=True`` puts both
      panels on one range (equal colours, equal values);
    * **title**: the gene, its mean level on this slide against its usual training range, the expected r and
      whether the gene is reliable (``var['expected_r']``, ``var['reliable']`` of a prediction with a trust
      record); an unreliable gene's panel is framed in red and says so;
    * **units**: the colour bar reads ``log1p(counts per 10,000)``.

    Parameters
    ----------
    adata_pred
        Prediction AnnData: ``X`` (n_spots, G), ``obsm['spatial']`` spot centres in full-resolution pixels,
        the image in ``uns['spatial']`` (see :func:`slide_image`); ``var`` trust columns when it has them.
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
        ``False`` (default): each panel its own range, as above. ``True``: one range per gene over its predicted
        and true panels.
    library_id
        ``uns['spatial']`` entry to take the image from (default: the slide's own, else the first).
    alpha
        Spot opacity; default 0.75 over an image (the tissue shows through), 1 without one.
    units
        Colour bar label (the values' unit).
    interval_width
        Add a panel per gene with the width of its prediction interval (``layers['upper'] − layers['lower']``
        of ``predict --interval``; where the prediction is least certain).

    Returns
    -------
    matplotlib.figure.Figure
        ``len(genes) × (1 or 2)`` map axes (one labelled colour bar each). The predicted panel's title reads
        ``"<gene> predicted · r = 0.42 here"`` when the truth is given, with its level and expected r.
    """
    from matplotlib.patches import Rectangle

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
    bar_label = units if shared_scale else f"{units}, this panel's range"

    if interval_width and not {Key.layers.lower, Key.layers.upper} <= set(pred.layers):
        raise KeyError("interval_width: the prediction has no layers['lower'/'upper'] (predict with --interval)")
    ncols = (1 if true is None else 2) + (1 if interval_width else 0)
    fig, axes = plt.subplots(len(genes), ncols, figsize=(4.4 * ncols, 4.3 * len(genes)), squeeze=False)
    for row, gene in enumerate(genes):
        panels = [("predicted", _values(pred, gene))]
        if true is not None:
            panels.append(("true", _values(true, gene)))
        if interval_width:
            i = list(pred.var_names).index(gene)
            width = np.asarray(pred.layers[Key.layers.upper][:, i] - pred.layers[Key.layers.lower][:, i], np.float64)
            level = (pred.uns.get(Key.uns.stgraph) or {}).get("interval_level")
            panels.append((f"{int(round(float(level) * 100)) if level else ''}% interval width".strip(), width))
        low, high = _var_value(pred, gene, Key.var.train_low), _var_value(pred, gene, Key.var.train_high)
        usual = (float(low), float(high)) if low is not None and high is not None else (
            (float(np.percentile(panels[1][1], 1)), float(np.percentile(panels[1][1], 99))) if true is not None
            else None)
        expected = _var_value(pred, gene, Key.var.expected_r)
        reliable = _var_value(pred, gene, Key.var.reliable)
        if shared_scale:
            expression = [v for label, v in panels if "width" not in label]
            shared = (min(v.min() for v in expression), max(v.max() for v in expression))
            ranges = [shared if "width" not in label else _robust_range(v, None) for label, v in panels]
        else:
            ranges = [_robust_range(v, usual if "width" not in label else None) for label, v in panels]
        for col, ((label, values), (lo, hi)) in enumerate(zip(panels, ranges)):
            ax = axes[row][col]
            if img is not None:
                ax.imshow(img)
            dots = ax.scatter(xy[:, 0], xy[:, 1], c=values, s=spot_size, cmap=cmap, vmin=lo, vmax=hi,
                              edgecolors="none", alpha=alpha)
            # Show the tissue under the spots, not the whole slide; y grows downwards as in the image.
            ax.set_xlim(xy[:, 0].min() - margin, xy[:, 0].max() + margin)
            ax.set_ylim(xy[:, 1].max() + margin, xy[:, 1].min() - margin)
            ax.set_aspect("equal")
            lines = [f"{gene} {label}"]
            if label == "predicted" and true is not None:
                lines[0] += f" · r = {_pearson(panels[0][1], panels[1][1]):.2f} here"
            level = f"mean {values.mean():.2f}"
            if usual is not None and label == "predicted" and low is not None:
                level += f" (training {usual[0]:.2f}–{usual[1]:.2f})"
            lines.append(level)
            if label == "predicted" and expected is not None and np.isfinite(float(expected)):
                lines.append(f"expected r {float(expected):.2f} · " + ("reliable" if bool(reliable) else "UNRELIABLE"))
            ax.set_title("\n".join(lines), fontsize=9,
                         color="firebrick" if label == "predicted" and reliable is not None and not bool(reliable)
                         else "black")
            ax.set_axis_off()
            if label == "predicted" and reliable is not None and not bool(reliable):
                ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, edgecolor="firebrick",
                                       linewidth=3, clip_on=False))
            bar = fig.colorbar(dots, ax=ax, fraction=0.046, pad=0.02)
            bar.set_label(bar_label, fontsize=8)
            bar.solids.set_alpha(1.0)  # the bar shows the colours, not the spots' transparency
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig
