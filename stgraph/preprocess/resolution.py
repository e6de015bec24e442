"""The physical resolution a run was trained at, and how a query slide is resampled to match it.

A run stores, in ``run.json`` under ``"resolution"``:

* ``microns_per_pixel``: the training slides' full-resolution pixel size (µm/px; ``None`` when a training
  slide does not state it; legacy ST slides get it from their spot array);
* ``patch_size``: the patch side the backbone saw, px;
* ``patch_um``: the patch side in µm (``data.patch_um``, else ``patch_size × microns_per_pixel``; ``None``
  when the pixel size is unknown);
* ``patch_mpp``: µm per patch pixel = ``patch_um / patch_size``.

A query is then cut into patches of ``patch_um`` µm resampled to ``patch_size`` px, so the backbone sees the
same µm per pixel it was trained on whatever the query's scan resolution. A query whose pixel size is within
1 % of the training one (the spread of estimates from a spot array) is cut at ``patch_size`` of its own
pixels, not resampled. A run without a physical resolution keeps the pixel behaviour for spot-level
slides; whole-slide prediction refuses it unless the training pixel size is given (``--train-mpp``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..errors import StgraphError
from ..keys import Key

__all__ = ["slide_mpp", "training_resolution", "QueryResolution", "query_resolution", "UnknownResolutionError",
           "SAME_SCALE_TOLERANCE", "require_physical_resolution", "ScaleMismatchError", "spot_spacing_um",
           "check_query_scale", "check_tissue_extent", "SCALE_FACTOR_LIMIT", "TISSUE_EXTENT_MM"]

#: Relative pixel-size difference below which a query is not resampled (pixel sizes estimated from a spot
#: array differ by ~0.5 % between sections of one scanner: HER2+ 289.9–291.0 px per 200 µm).
SAME_SCALE_TOLERANCE = 0.01


class UnknownResolutionError(StgraphError, ValueError):
    """A run records no physical resolution where one is needed (whole-slide prediction)."""


class ScaleMismatchError(StgraphError, ValueError):
    """A query's pixel size is probably wrong: unknown while the run has one, or it puts the spot spacing or
    the tissue far outside what is plausible (``--allow-scale-mismatch`` predicts anyway)."""


#: A query whose spot spacing (µm) differs from every training slide's by more than this factor is refused
#: (above 2, so that Visium, 100 µm apart, and legacy ST, 200 µm apart, predict each other).
SCALE_FACTOR_LIMIT = 2.5
#: The longest side tissue on a glass slide (75 × 25 mm) can span, mm: beyond it the pixel size is wrong.
TISSUE_EXTENT_MM = 60.0


def spot_spacing_um(adata, max_spots: int = 20000) -> Optional[float]:
    """Median distance from a spot to its nearest neighbour, in µm (``None`` without a pixel size or with
    fewer than two spots); at most ``max_spots`` spots are sampled (deterministically)."""
    mpp = slide_mpp(adata)
    xy = np.asarray(adata.obsm.get(Key.obsm.spatial, np.zeros((0, 2))), dtype=np.float64)
    if mpp is None or len(xy) < 2:
        return None
    from scipy.spatial import cKDTree

    sample = xy[:: max(1, len(xy) // max_spots)]
    d, _ = cKDTree(xy).query(sample, k=2)
    d = d[:, 1][d[:, 1] > 0]
    return float(np.median(d) * mpp) if len(d) else None


def check_query_scale(resolution: Optional[dict], adata, name: str = "the query", allow: bool = False) -> None:
    """Refuse a query whose pixel size is probably wrong, before any compute (``allow``: only warn):

    * the run knows the µm per pixel it was trained at, and the query states none (its patches would cover
      another area than in training);
    * its spots lie more than :data:`SCALE_FACTOR_LIMIT` × closer or farther apart (µm) than the training
      slides' (a pixel size off by a factor).
    """
    res = resolution or {}
    problems = []
    if res.get("patch_um") is not None and slide_mpp(adata) is None:
        problems.append(f"{name} states no pixel size while the run was trained at "
                        f"{res.get('microns_per_pixel') or res.get('patch_mpp'):.4g} µm/px ({res['patch_um']:.4g} µm "
                        f"patches): pass --mpp (µm per pixel of the query image)")
    train = [s for s in (res.get("spot_spacing_um") or []) if s]
    spacing = spot_spacing_um(adata) if train else None
    if spacing and (spacing > SCALE_FACTOR_LIMIT * max(train) or spacing < min(train) / SCALE_FACTOR_LIMIT):
        problems.append(f"{name}'s spots are {spacing:.4g} µm apart at its stated {slide_mpp(adata):.4g} µm/px, the "
                        f"training slides' {min(train):.4g}–{max(train):.4g} µm: is its pixel size right (--mpp)?")
    if problems:
        text = "; ".join(problems)
        if not allow:
            raise ScaleMismatchError(text + " (or --allow-scale-mismatch to predict anyway)")
        log.warning("%s (predicting anyway: --allow-scale-mismatch)", text)


def check_tissue_extent(extent_um: float, name: str, mpp: float, allow: bool = False) -> None:
    """Refuse a whole slide whose tissue, at its stated pixel size, is longer than tissue on a glass slide can
    be (:data:`TISSUE_EXTENT_MM`): the pixel size is then wrong (``allow``: only warn)."""
    mm = extent_um / 1000.0
    if mm <= TISSUE_EXTENT_MM:
        return
    text = (f"{name}: the tissue's longest side is {mm:.3g} mm at the stated {mpp:.4g} µm/px, longer than tissue "
            f"on a 75 × 25 mm glass slide can be ({TISSUE_EXTENT_MM:g} mm): is the pixel size right (--mpp)?")
    if not allow:
        raise ScaleMismatchError(text + " (or --allow-scale-mismatch to predict anyway)")
    log.warning("%s (predicting anyway: --allow-scale-mismatch)", text)

log = logging.getLogger("stgraph")


def slide_mpp(adata) -> Optional[float]:
    """``metadata['microns_per_pixel']`` of a slide's library, or ``None``."""
    for entry in (adata.uns.get(Key.uns.spatial) or {}).values():
        mpp = (entry or {}).get(Key.uns.metadata, {}).get(Key.metadata.microns_per_pixel)
        if mpp:
            return float(mpp)
    return None


def training_resolution(config, slides: Sequence) -> dict:
    """The ``run.json`` ``"resolution"`` record of a run trained on ``slides`` (AnnData) with ``config``, with
    each training slide's spot spacing in µm (``spot_spacing_um``; ``None`` where the pixel size is unknown)."""
    return {**resolution_record(config, [slide_mpp(ad) for ad in slides]),
            "spot_spacing_um": [spot_spacing_um(ad) for ad in slides]}


def resolution_record(config, mpps: Sequence) -> dict:
    """:func:`training_resolution` from the training slides' µm/px (``None`` where unknown)."""
    mpps = list(mpps)
    known = [m for m in mpps if m is not None]
    mpp = float(np.median(known)) if known and len(known) == len(mpps) else None
    size = int(config.data.patch_size)
    patch_um = config.data.patch_um
    if patch_um is None and mpp is not None:
        patch_um = size * mpp
    return {"microns_per_pixel": mpp, "slide_microns_per_pixel": mpps, "patch_size": size,
            "patch_um": None if patch_um is None else float(patch_um),
            "patch_mpp": None if patch_um is None else float(patch_um) / size,
            "patch_um_from_config": config.data.patch_um is not None}


@dataclass
class QueryResolution:
    """How a query slide is cut: ``patch_um`` µm patches at ``target_mpp`` µm/px (``patch_size`` px);
    ``factor`` = target_mpp / query mpp (> 1: the query is downsampled); ``physical``: False when the run
    has no physical resolution (pixel behaviour)."""

    patch_um: float
    target_mpp: float
    patch_size: int
    factor: float
    physical: bool

    def describe(self) -> str:
        if not self.physical:
            return (f"the run has no physical resolution (its training slides state no pixel size): patches of "
                    f"{self.patch_size} query pixels ({self.patch_um:g} µm at this slide's pixel size), not resampled")
        how = "no resampling" if abs(self.factor - 1) < 1e-3 else (
            f"resampled by {1 / self.factor:.3g}× ({'down' if self.factor > 1 else 'up'}sampling, factor {self.factor:.3g})")
        return (f"patches of {self.patch_um:g} µm at {self.target_mpp:.4g} µm/px ({self.patch_size} px) as in "
                f"training: {how}")


def query_resolution(resolution: Optional[dict], config, query_mpp: float,
                     train_mpp: Optional[float] = None) -> QueryResolution:
    """Patch geometry for a query slide of ``query_mpp`` µm/px given the run's ``resolution`` record
    (``None`` for runs written before it existed: ``data.patch_um`` if set, else pixel behaviour).
    ``train_mpp``: the training images' µm/px for a run that records none (``--train-mpp``)."""
    size = int(config.data.patch_size)
    resolution = resolution or {}
    patch_um = resolution.get("patch_um")
    if patch_um is None:
        patch_um = config.data.patch_um
    if patch_um is None and train_mpp is not None:
        if not train_mpp > 0:
            raise ValueError(f"--train-mpp must be > 0, got {train_mpp}")
        patch_um = size * float(train_mpp)
    if patch_um is None:
        return QueryResolution(size * query_mpp, query_mpp, size, 1.0, False)
    target = float(patch_um) / size
    factor = target / float(query_mpp)
    if abs(factor - 1.0) < SAME_SCALE_TOLERANCE:
        return QueryResolution(size * float(query_mpp), float(query_mpp), size, 1.0, True)
    return QueryResolution(float(patch_um), target, size, factor, True)


def require_physical_resolution(resolution: Optional[dict], config, train_mpp: Optional[float] = None) -> None:
    """Refuse, before any compute, a run that records no physical resolution unless ``train_mpp`` is given:
    a whole slide would otherwise be cut at its own pixel size, a different scale from training."""
    if (resolution or {}).get("patch_um") is not None or config.data.patch_um is not None or train_mpp is not None:
        return
    raise UnknownResolutionError(
        "the run records no physical resolution (its training slides stated no pixel size), so whole-slide "
        "patches cannot be cut at the training scale: pass --train-mpp UM (µm per pixel of the training "
        "images), or retrain on slides that state their pixel size")
