"""Whole-slide images (``.svs``, ``.ndpi``, ``.mrxs``, pyramidal ``.tif``/``.tiff``) read level by level.

A whole-slide image is a pyramid: level 0 is the scan at full resolution (typically 0.25 µm per pixel at
40×, 0.5 at 20×; 10⁹–10¹⁰ pixels), each further level a downsampled copy. :class:`WSIImage` opens one and
reads only the tiles of the level and region asked for:

* TIFF-based files (generic pyramidal TIFF with SubIFDs or successive pages, OME-TIFF, Aperio SVS, NDPI)
  are read with :mod:`tifffile` through its zarr store; no extra package is needed for the zlib/LZW/
  uncompressed tiles that tifffile decodes itself (JPEG / JPEG 2000 tiles, the norm in scanner output,
  need ``imagecodecs``, or openslide).
* openslide-python (optional: ``pip install stgraph[openslide]``: openslide-python + openslide-bin) is used when importable for
  the scanner formats it handles natively (``.svs``, ``.ndpi``, ``.mrxs``, …), and is required for
  ``.mrxs``, which is not a TIFF.

Coordinates follow openslide: ``(x, y)`` = (column, row); a region is given by its top-left corner in
**level-0 pixels** and its width/height in pixels of the level read. :meth:`WSIImage.crop` crops a level-0
box padded outside the slide, as the full-resolution images of :mod:`stgraph.data.image` do, so a
``WSIImage`` can stand wherever a full-resolution image is cropped.

The pixel size (``mpp``, µm per level-0 pixel) comes, in order, from the user's ``mpp=``, openslide's
``openslide.mpp-x``, the Aperio ``ImageDescription`` (``MPP = 0.2520``), OME-XML ``PhysicalSizeX`` (with its
unit), or the TIFF ``XResolution`` / ``ResolutionUnit`` tags (centimetre, inch, mm, µm); a value outside
[0.01, 100] µm/px (e.g. the 72 dpi that image editors write) is ignored as not a microscope calibration.
"""
from __future__ import annotations

import math
import os
from typing import Iterator, Optional

import numpy as np

from ..errors import SlideFormatError, require_file
from .backends import (OPENSLIDE_FIRST, OPENSLIDE_HINT, OPENSLIDE_ONLY, PILLOW_SUFFIXES, OpenSlideBackend,
                       PillowBackend, TiffBackend, openslide_available)
from .mpp import MPP_RANGE, plausible_mpp

__all__ = ["WSIImage", "open_wsi", "read_region_at_mpp", "iter_patches_at_mpp", "level_for_mpp"]


class WSIImage:
    """A whole-slide image read level by level and region by region.

    Parameters
    ----------
    path
        ``.svs``, ``.ndpi``, ``.mrxs``, ``.tif``/``.tiff`` (pyramidal or not), … (see module doc).
    mpp
        µm per level-0 pixel; overrides the file's metadata.
    backend
        ``"auto"`` (openslide for scanner formats when importable, tifffile otherwise), ``"tifffile"`` or
        ``"openslide"``.
    require_mpp
        Raise :class:`SlideFormatError` when the pixel size is neither given nor in the file (default).
        With ``False`` :attr:`mpp` is ``None`` then.

    Attributes
    ----------
    shape
        (H, W, 3) of level 0, like :class:`~stgraph.data.image.ArrayImage`.
    level_count
        Number of pyramid levels (≥ 1).
    level_dimensions
        ``[(width, height), …]`` per level, pixels.
    level_downsamples
        Level-0 pixels per level pixel, per level (mean of the x and y ratios; level 0 = 1.0).
    mpp
        µm per level-0 pixel (``None`` only with ``require_mpp=False``); :attr:`mpp_source` says where it
        came from (``"user"``, ``"Aperio ImageDescription MPP"``, …).
    backend
        ``"tifffile"``, ``"openslide"`` or ``"pillow"`` (JPEG, PNG, ...: one level, decoded once).
    """

    def __init__(self, path: str | os.PathLike, mpp: Optional[float] = None, backend: str = "auto",
                 require_mpp: bool = True):
        path = require_file(path, "whole-slide image")
        self.path = path
        self.source = str(path)
        suffix = path.suffix.lower()
        if backend not in ("auto", "tifffile", "openslide", "pillow"):
            raise ValueError(f"backend must be 'auto', 'tifffile', 'openslide' or 'pillow', got {backend!r}")
        if backend == "auto":
            backend = ("pillow" if suffix in PILLOW_SUFFIXES else
                       "openslide" if (suffix in OPENSLIDE_FIRST and openslide_available()) else "tifffile")
        if backend == "tifffile" and suffix in OPENSLIDE_ONLY:
            raise SlideFormatError(f"{path}: {suffix} slides are read with openslide, which is not installed "
                                   f"({OPENSLIDE_HINT})")
        if backend == "openslide" and not openslide_available():
            raise SlideFormatError(f"{path}: backend='openslide' but openslide is not importable ({OPENSLIDE_HINT})")
        self._backend = (OpenSlideBackend(path) if backend == "openslide" else
                         PillowBackend(path) if backend == "pillow" else TiffBackend(path))
        self.backend = backend
        self.level_dimensions: list[tuple[int, int]] = list(self._backend.dimensions)
        self.level_count = len(self.level_dimensions)
        w0, h0 = self.level_dimensions[0]
        if w0 <= 0 or h0 <= 0:
            raise SlideFormatError(f"whole-slide image {path} has an empty level 0 ({w0} × {h0} px)")
        self.shape = (int(h0), int(w0), 3)
        if isinstance(self._backend, TiffBackend):
            array, axes = self._backend.levels[0]
            channels = int(array.shape[axes.index("S")]) if "S" in axes else 1
            if channels < 3:
                from ..image import warn_if_greyscale

                warn_if_greyscale(path, (int(h0), int(w0), channels) if channels > 1 else (int(h0), int(w0)))
        if isinstance(self._backend, OpenSlideBackend):
            self.level_downsamples = list(self._backend.downsamples)
        else:
            self.level_downsamples = [(w0 / w + h0 / h) / 2.0 for w, h in self.level_dimensions]
        if mpp is not None:
            if not (np.isfinite(mpp) and mpp > 0):
                raise ValueError(f"mpp must be a positive number of µm per pixel, got {mpp}")
            if plausible_mpp(mpp) is None:  # 1e6 µm/px would ask for petabytes of patches
                raise ValueError(f"mpp {mpp:g} µm per pixel is outside the range of microscope images "
                                 f"({MPP_RANGE[0]:g}–{MPP_RANGE[1]:g} µm/px); check --mpp")
            self.mpp, self.mpp_source = float(mpp), "user"
        else:
            found, where = self._backend.mpp()
            if found is None and require_mpp:
                self.close()
                raise SlideFormatError(
                    f"whole-slide image {path} does not state its pixel size (no Aperio MPP, OME PhysicalSizeX, "
                    "openslide mpp or TIFF resolution in µm/cm/inch); pass it with --mpp (mpp= in Python), "
                    "in µm per level-0 pixel, e.g. 0.25 for a 40× scan or 0.5 for 20×")
            self.mpp, self.mpp_source = found, where

    # -- pyramid ---------------------------------------------------------------------------------------
    def best_level_for_downsample(self, downsample: float) -> int:
        """The level with the largest downsample ≤ ``downsample`` (level 0 when ``downsample`` < 1).

        A relative tolerance of 1e-6 lets e.g. 3.9999999 select a level of downsample 4.
        """
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1 + 1e-6) and ds >= self.level_downsamples[best]:
                best = level
        return best

    def read_level_region(self, level: int, x: int, y: int, w: int, h: int, pad_value: int = 255) -> np.ndarray:
        """Pixels ``[y, y+h) × [x, x+w)`` **in level coordinates** as (h, w, 3) uint8; ``pad_value`` outside."""
        if not 0 <= level < self.level_count:
            raise ValueError(f"{self.source} has levels 0…{self.level_count - 1}; got level {level}")
        x, y, w, h = int(x), int(y), int(w), int(h)
        if w < 0 or h < 0:
            raise ValueError(f"region width and height must be ≥ 0, got {w} × {h}")
        out = np.full((h, w, 3), pad_value, dtype=np.uint8)
        lw, lh = self.level_dimensions[level]
        sx0, sy0, sx1, sy1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
        if sx1 > sx0 and sy1 > sy0:
            out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = self._backend.read(level, sx0, sy0, sx1 - sx0, sy1 - sy0)
        return out

    def read_region(self, x: int, y: int, w: int, h: int, level: int = 0, pad_value: int = 255) -> np.ndarray:
        """openslide's convention: top-left ``(x, y)`` in **level-0** pixels, size ``w × h`` in pixels of
        ``level``. Returns (h, w, 3) uint8 RGB; the part outside the slide is ``pad_value``.

        The level-0 corner maps to level pixel ``round(x / downsample)``.
        """
        ds = self.level_downsamples[level] if 0 <= level < self.level_count else 1.0
        return self.read_level_region(level, int(round(x / ds)), int(round(y / ds)), w, h, pad_value)

    def crop(self, x0: int, y0: int, x1: int, y1: int, pad_value: int = 255) -> np.ndarray:
        """Level-0 pixels ``[y0:y1, x0:x1]`` as (y1 − y0, x1 − x0, 3) uint8, padded outside the slide."""
        return self.read_level_region(0, x0, y0, x1 - x0, y1 - y0, pad_value)

    def read_level_resized(self, level: int, out_width: int, out_height: int,
                           max_strip_pixels: int = 32_000_000) -> np.ndarray:
        """The whole of ``level`` resampled to (out_height, out_width, 3) uint8.

        Read in horizontal strips of at most ``max_strip_pixels`` level pixels, so memory stays bounded even
        for a slide with a single 10⁹-pixel level; each strip is resampled with PIL (bilinear, with the
        antialiasing support PIL uses when shrinking) over its exact fractional source box.
        """
        from PIL import Image

        lw, lh = self.level_dimensions[level]
        sy = lh / out_height
        rows_per_strip = max(1, int(max_strip_pixels // max(1, lw) / max(sy, 1.0)))
        out = np.empty((out_height, out_width, 3), dtype=np.uint8)
        for r0 in range(0, out_height, rows_per_strip):
            r1 = min(out_height, r0 + rows_per_strip)
            ly0, ly1 = r0 * sy, r1 * sy
            m = _margin(sy)
            iy0, iy1 = max(0, int(math.floor(ly0)) - m), min(lh, int(math.ceil(ly1)) + m)
            strip = Image.fromarray(self.read_level_region(level, 0, iy0, lw, iy1 - iy0))
            resized = strip.resize((out_width, r1 - r0), Image.Resampling.BILINEAR,
                                   box=(0.0, ly0 - iy0, float(lw), ly1 - iy0))
            out[r0:r1] = np.asarray(resized)
        return out

    def thumbnail(self, max_side: int = 2000) -> np.ndarray:
        """The slide downscaled so its longest side is ``max_side`` (or level 0 if smaller): (h, w, 3) uint8.

        Read from the smallest level still at least that large. Its scale (thumbnail px per level-0 px) is
        ``thumbnail.shape[1] / self.shape[1]``.
        """
        h0, w0 = self.shape[:2]
        factor = max(1.0, max(w0, h0) / float(max_side))
        out_w, out_h = max(1, int(round(w0 / factor))), max(1, int(round(h0 / factor)))
        level = self.best_level_for_downsample(factor)
        return self.read_level_resized(level, out_w, out_h)

    # -- lifetime --------------------------------------------------------------------------------------
    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> "WSIImage":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        mpp = f"{self.mpp:g} µm/px" if self.mpp else "mpp unknown"
        return (f"WSIImage({self.source!r}, {self.shape[1]} × {self.shape[0]} px, {self.level_count} levels, "
                f"{mpp}, backend={self.backend})")


def open_wsi(path: str | os.PathLike, mpp: Optional[float] = None, backend: str = "auto",
             require_mpp: bool = True) -> WSIImage:
    """Open a whole-slide image; see :class:`WSIImage`."""
    return WSIImage(path, mpp=mpp, backend=backend, require_mpp=require_mpp)


# ------------------------------------------------------------------------------ physical resolution
def _require_mpp(image: WSIImage) -> float:
    if not image.mpp:
        raise SlideFormatError(f"{image.source}: the pixel size is unknown; pass mpp= (--mpp) when opening it")
    return float(image.mpp)


def _margin(shrink: float) -> int:
    """Source pixels needed beyond a box so resampling it by ``shrink`` (source px per output px) sees every
    neighbour: PIL's bilinear kernel spans ±1 output pixel, i.e. ±max(1, shrink) source pixels."""
    return int(math.ceil(max(1.0, shrink))) + 1


def _resample(region: np.ndarray, box: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """``region``'s fractional ``box`` (x0, y0, x1, y1) resampled to ``size`` = (width, height)."""
    from PIL import Image

    bw, bh = box[2] - box[0], box[3] - box[1]
    if (abs(bw - size[0]) < 1e-9 and abs(bh - size[1]) < 1e-9 and float(box[0]).is_integer()
            and float(box[1]).is_integer()):
        x0, y0 = int(box[0]), int(box[1])  # same size, whole-pixel offset: a plain copy, no interpolation
        return np.ascontiguousarray(region[y0 : y0 + size[1], x0 : x0 + size[0]])
    return np.asarray(Image.fromarray(region).resize(size, Image.Resampling.BILINEAR, box=box))


def read_region_at_mpp(image: WSIImage, x: float, y: float, w: float, h: float, target_mpp: float,
                       out_size: Optional[tuple[int, int]] = None, pad_value: int = 255) -> np.ndarray:
    """Read a level-0 region resampled to a physical pixel size.

    Parameters
    ----------
    image
        An open slide with a known :attr:`WSIImage.mpp` (µm per level-0 pixel).
    x, y, w, h
        The region: top-left corner and size in level-0 pixels (fractions allowed).
    target_mpp
        µm per output pixel.
    out_size
        (width, height) of the output; default ``(round(w · mpp / target_mpp), round(h · mpp / target_mpp))``.

    Returns
    -------
    numpy.ndarray
        (height, width, 3) uint8.

    Notes
    -----
    The downsample needed is d = target_mpp / mpp. The level read is the one with the largest downsample
    ≤ d (:meth:`WSIImage.best_level_for_downsample`), so the output is never upsampled from a coarser level
    than necessary; the region maps to ``[x / ds_l, (x + w) / ds_l)`` there, a margin of
    ⌈max(1, d / ds_l)⌉ + 1 pixels is read around it (so bilinear resampling has all its neighbours) and
    it is resampled to the exact output size.
    """
    mpp = _require_mpp(image)
    if not (target_mpp > 0):
        raise ValueError(f"target_mpp must be positive, got {target_mpp}")
    if out_size is None:
        out_size = (max(1, int(round(w * mpp / target_mpp))), max(1, int(round(h * mpp / target_mpp))))
    level = image.best_level_for_downsample(target_mpp / mpp)
    ds = image.level_downsamples[level]
    bx0, by0, bx1, by1 = x / ds, y / ds, (x + w) / ds, (y + h) / ds
    margin = _margin(target_mpp / mpp / ds)
    ix0, iy0 = int(math.floor(bx0)) - margin, int(math.floor(by0)) - margin
    ix1, iy1 = int(math.ceil(bx1)) + margin, int(math.ceil(by1)) + margin
    region = image.read_level_region(level, ix0, iy0, ix1 - ix0, iy1 - iy0, pad_value)
    return _resample(region, (bx0 - ix0, by0 - iy0, bx1 - ix0, by1 - iy0), tuple(int(v) for v in out_size))


def iter_patches_at_mpp(image: WSIImage, centers_xy: np.ndarray, patch_um: float, target_mpp: float,
                        batch_size: int = 256, pad_value: int = 255,
                        max_read_pixels: int = 64_000_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Square patches centred on spots, at a physical pixel size, read band by band through the pyramid.

    Parameters
    ----------
    image
        Open slide with a known ``mpp``.
    centers_xy
        (n, 2) spot centres x, y in level-0 pixels (``obsm['spatial']``).
    patch_um
        Patch side in µm (e.g. 112 µm → 224 px at 0.5 µm/px).
    target_mpp
        µm per output pixel.
    batch_size
        Spots per yielded batch. Spots are visited in row-major order (sorted by y, then x) and the
        bounding box of a batch's patches is read once at the chosen level, so each tile is decoded about
        once per band instead of once per overlapping patch.
    max_read_pixels
        A batch whose bounding box exceeds this many level pixels (spots far apart) is split in halves, so
        memory stays bounded: about ``max_read_pixels · 3`` bytes plus the batch.

    Yields
    ------
    (indices, patches)
        ``indices`` (b,) int64 positions into ``centers_xy``; ``patches`` (b, S, S, 3) uint8 with
        S = round(patch_um / target_mpp). Every spot is yielded exactly once.
    """
    mpp = _require_mpp(image)
    xy = np.asarray(centers_xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"centers_xy must be (n, 2) x, y; got shape {xy.shape}")
    side = max(1, int(round(patch_um / target_mpp)))
    half0 = patch_um / mpp / 2.0  # half the patch side in level-0 px
    level = image.best_level_for_downsample(target_mpp / mpp)
    ds = image.level_downsamples[level]
    margin = _margin(target_mpp / mpp / ds)
    order = np.lexsort((xy[:, 0], xy[:, 1]))

    def batches(idx: np.ndarray) -> Iterator[np.ndarray]:
        x0, y0 = (xy[idx].min(axis=0) - half0) / ds
        x1, y1 = (xy[idx].max(axis=0) + half0) / ds
        if len(idx) > 1 and (x1 - x0 + 2 * margin) * (y1 - y0 + 2 * margin) > max_read_pixels:
            mid = len(idx) // 2
            yield from batches(idx[:mid])
            yield from batches(idx[mid:])
        else:
            yield idx

    for start in range(0, len(order), batch_size):
        for idx in batches(order[start : start + batch_size]):
            bx0 = (xy[idx, 0] - half0) / ds  # patch boxes in level pixels
            by0 = (xy[idx, 1] - half0) / ds
            extent = 2 * half0 / ds
            ox, oy = int(math.floor(bx0.min())) - margin, int(math.floor(by0.min())) - margin
            ex, ey = int(math.ceil(bx0.max() + extent)) + margin, int(math.ceil(by0.max() + extent)) + margin
            band = image.read_level_region(level, ox, oy, ex - ox, ey - oy, pad_value)
            out = np.empty((len(idx), side, side, 3), dtype=np.uint8)
            for k in range(len(idx)):
                # Crop a small window first: PIL resampling of the whole band per patch would copy it.
                cx0, cy0 = int(math.floor(bx0[k] - ox)) - margin, int(math.floor(by0[k] - oy)) - margin
                cx1 = int(math.ceil(bx0[k] - ox + extent)) + margin
                cy1 = int(math.ceil(by0[k] - oy + extent)) + margin
                window = band[cy0:cy1, cx0:cx1]
                bx, by = bx0[k] - ox - cx0, by0[k] - oy - cy0
                out[k] = _resample(window, (bx, by, bx + extent, by + extent), (side, side))
            yield idx.astype(np.int64), out


def level_for_mpp(image: WSIImage, target_mpp: float) -> int:
    """The level :func:`read_region_at_mpp` reads for ``target_mpp`` (µm/px)."""
    return image.best_level_for_downsample(target_mpp / _require_mpp(image))
