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
           "SAME_SCALE_TOLERANCE", "require_physical_resolution"]

#: Relative pixel-size difference below which a query is not resampled (pixel sizes estimated from a spot
#: array differ by ~0.5 % between sections of one scanner: HER2+ 289.9–291.0 px per 200 µm).
SAME_SCALE_TOLERANCE = 0.01


class UnknownResolutionError(StgraphError, ValueError):
    """A run records no physical resolution where one is needed (whole-slide prediction)."""

log = logging.getLogger("stgraph")


def slide_mpp(adata) -> Optional[float]:
    """``metadata['microns_per_pixel']`` of a slide's library, or ``None``."""
    for entry in (adata.uns.get(Key.uns.spatial) or {}).values():
        mpp = (entry or {}).get(Key.uns.metadata, {}).get(Key.metadata.microns_per_pixel)
        if mpp:
            return float(mpp)
    return None


def training_resolution(config, slides: Sequence) -> dict:
    """The ``run.json`` ``"resolution"`` record of a run trained on ``slides`` (AnnData) with ``config``."""
    return resolution_record(config, [slide_mpp(ad) for ad in slides])


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
