"""Tissue detection on a slide thumbnail: which pixels are stained tissue and which are empty glass.

The method is the one HEST and CLAM use: H&E stain is saturated (pink/purple), glass, white background and
grey pen-free shadows are not, so an Otsu threshold on the HSV saturation channel, after a median blur that
removes speckle, separates the two. The mask is then cleaned: morphological closing joins nearby pieces of
one section, holes (lumens, fat, tears) are filled, and fragments smaller than a minimum area (dust,
debris) are dropped.
"""
from __future__ import annotations

import warnings
from typing import Optional

import numpy as np

from ..errors import SlideFormatError

__all__ = ["NoTissueError", "tissue_mask", "saturation"]


class NoTissueError(SlideFormatError):
    """The image holds no detectable tissue (blank, all glass, or too faint)."""


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation of an (h, w, 3) uint8 RGB image as (h, w) uint8 in 0…255: (max − min) / max · 255."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"expected an (h, w, 3) RGB image, got shape {rgb.shape}")
    rgb = rgb[..., :3].astype(np.float32)
    high, low = rgb.max(axis=2), rgb.min(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        sat = np.where(high > 0, (high - low) / high, 0.0)
    return np.rint(sat * 255.0).astype(np.uint8)


def tissue_mask(thumbnail_rgb: np.ndarray, mpp: Optional[float] = None, min_area_um2: float = 50_000.0,
                min_area_px: int = 64, median_size: int = 7, close_radius: int = 2, fill_holes: bool = True,
                min_saturation: int = 15, on_empty: str = "raise", source: str = "thumbnail") -> np.ndarray:
    """Boolean tissue mask of a slide thumbnail.

    Parameters
    ----------
    thumbnail_rgb
        (h, w, 3) uint8 RGB image, typically a slide thumbnail of 1 000–4 000 px (8–30 µm per pixel).
    mpp
        µm per **thumbnail** pixel (level-0 mpp × level-0 width / thumbnail width). When given, fragments
        smaller than ``min_area_um2`` µm² are removed (i.e. ``min_area_um2 / mpp²`` pixels); otherwise those
        smaller than ``min_area_px`` pixels.
    min_area_um2
        Smallest tissue piece kept, µm² (default 0.05 mm², about five Visium spots).
    min_area_px
        Smallest piece kept in pixels when ``mpp`` is not given.
    median_size
        Side of the median filter applied to the saturation, pixels (odd; 1 disables it).
    close_radius
        Radius of the disc used for morphological closing, pixels (0 disables it).
    fill_holes
        Fill holes enclosed by tissue.
    min_saturation
        Floor on the threshold (0…255): the Otsu threshold of a tissue-free image splits noise, so a threshold
        below this is raised to it. Pink H&E stain has a saturation of about 60–120; glass is under 10.
    on_empty
        ``"raise"`` (:class:`NoTissueError`) or ``"warn"`` (a :class:`UserWarning`, and an all-``False``
        mask) when nothing is left.
    source
        Name of the image for messages (e.g. the slide path).

    Returns
    -------
    numpy.ndarray
        (h, w) bool, ``True`` on tissue.
    """
    from scipy import ndimage
    from skimage.filters import threshold_otsu
    from skimage.morphology import disk, remove_small_objects

    if on_empty not in ("raise", "warn"):
        raise ValueError(f"on_empty must be 'raise' or 'warn', got {on_empty!r}")
    sat = saturation(thumbnail_rgb)
    if median_size > 1:
        sat = ndimage.median_filter(sat, size=int(median_size))
    if sat.max() == sat.min():  # constant image: Otsu is undefined
        threshold = float(max(min_saturation, int(sat.max()) + 1))
    else:
        threshold = max(float(threshold_otsu(sat)), float(min_saturation))
    mask = sat > threshold
    if close_radius > 0:
        # Pad first: closing's erosion treats outside the image as background and would eat tissue
        # touching the border.
        r = int(close_radius)
        padded = np.pad(mask, r)
        mask = ndimage.binary_closing(padded, structure=disk(r).astype(bool))[r:-r, r:-r]
    if fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    if mpp is not None:
        if not (mpp > 0):
            raise ValueError(f"mpp must be positive (µm per thumbnail pixel), got {mpp}")
        min_pixels = int(np.ceil(min_area_um2 / float(mpp) ** 2))
    else:
        min_pixels = int(min_area_px)
    if min_pixels > 1:
        mask = remove_small_objects(mask, max_size=min_pixels - 1) if _has_max_size() else \
            remove_small_objects(mask, min_size=min_pixels)
    if not mask.any():
        area = f"{min_area_um2:g} µm²" if mpp is not None else f"{min_pixels} px"
        message = (f"no tissue found in {source}: no region of HSV saturation above {threshold:.0f}/255 "
                   f"(max {int(sat.max())}) covers at least {area}. Is the image blank or not an H&E stain? "
                   f"To detect faint tissue lower min_saturation (now {min_saturation}; `stgraph predict "
                   f"--min-saturation`) or the minimum area (min_area_um2, now {min_area_um2:g} µm²; "
                   "`--min-tissue-area`).")
        if on_empty == "raise":
            raise NoTissueError(message)
        warnings.warn(message, UserWarning, stacklevel=2)
    return mask


def _has_max_size() -> bool:
    """scikit-image ≥ 0.26 replaced ``min_size`` (keep ≥) of remove_small_objects by ``max_size`` (drop ≤)."""
    import inspect

    from skimage.morphology import remove_small_objects

    return "max_size" in inspect.signature(remove_small_objects).parameters
