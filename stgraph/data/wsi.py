"""Whole-slide images (``.svs``, ``.ndpi``, ``.mrxs``, pyramidal ``.tif``/``.tiff``) read level by level.

A whole-slide image is a pyramid: level 0 is the scan at full resolution (typically 0.25 µm per pixel at
40×, 0.5 at 20×; 10⁹–10¹⁰ pixels), each further level a downsampled copy. :class:`WSIImage` opens one and
reads only the tiles of the level and region asked for:

* TIFF-based files (generic pyramidal TIFF with SubIFDs or successive pages, OME-TIFF, Aperio SVS, NDPI)
  are read with :mod:`tifffile` through its zarr store; no extra package is needed for the zlib/LZW/
  uncompressed tiles that tifffile decodes itself (JPEG / JPEG 2000 tiles, the norm in scanner output,
  need ``imagecodecs``, or openslide).
* openslide-python (optional: ``pip install openslide-python openslide-bin``) is used when importable for
  the scanner formats it handles natively (``.svs``, ``.ndpi``, ``.mrxs``, …), and is required for
  ``.mrxs``, which is not a TIFF.

Coordinates follow openslide: ``(x, y)`` = (column, row); a region is given by its top-left corner in
**level-0 pixels** and its width/height in pixels of the level read. :meth:`WSIImage.crop` implements the
:class:`~stgraph.data.patches.FullResImage` protocol (level-0 box, padded outside the slide), so a
``WSIImage`` can stand wherever a full-resolution image is cropped.

The pixel size (``mpp``, µm per level-0 pixel) comes, in order, from the user's ``mpp=``, openslide's
``openslide.mpp-x``, the Aperio ``ImageDescription`` (``MPP = 0.2520``), OME-XML ``PhysicalSizeX`` (with its
unit), or the TIFF ``XResolution`` / ``ResolutionUnit`` tags (centimetre, inch, mm, µm); a value outside
[0.01, 100] µm/px (e.g. the 72 dpi that image editors write) is ignored as not a microscope calibration.
"""
from __future__ import annotations

import math
import os
import re
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from .errors import SlideFormatError, require_file

__all__ = [
    "WSI_SUFFIXES",
    "WSIImage",
    "open_wsi",
    "read_region_at_mpp",
    "iter_patches_at_mpp",
    "level_for_mpp",
    "openslide_available",
    "mpp_from_aperio_description",
    "mpp_from_ome_xml",
    "mpp_from_tiff_resolution",
]

WSI_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".tif", ".tiff", ".scn", ".vms", ".vmu", ".bif", ".svslide")
#: Formats openslide reads natively; preferred over tifffile for them when openslide is importable
#: (their tiles are JPEG, which tifffile decodes only with imagecodecs).
_OPENSLIDE_FIRST = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
#: Formats that are not TIFF at all: only openslide reads them.
_OPENSLIDE_ONLY = (".mrxs", ".vms", ".vmu")
#: Plausible microscope pixel sizes (µm/px). Outside this a resolution tag is not a calibration (72 dpi
#: = 352.8 µm/px is what image editors write by default).
_MPP_RANGE = (0.01, 100.0)
_OPENSLIDE_HINT = "pip install openslide-python openslide-bin"


def openslide_available() -> bool:
    """True when ``import openslide`` works (openslide-python with its C library)."""
    try:
        import openslide  # noqa: F401
    except Exception:  # ImportError, or OSError when the C library is missing
        return False
    return True


# ------------------------------------------------------------------------------------------ pixel size
def _plausible(mpp: Optional[float]) -> Optional[float]:
    if mpp is None or not np.isfinite(mpp) or not (_MPP_RANGE[0] <= mpp <= _MPP_RANGE[1]):
        return None
    return float(mpp)


def mpp_from_aperio_description(description: str) -> Optional[float]:
    """µm per pixel from an Aperio SVS ``ImageDescription`` (``…|MPP = 0.2520|…``), else ``None``."""
    if not description or not description.lstrip().startswith("Aperio"):
        return None
    match = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", description)
    if not match:
        return None
    try:
        return _plausible(float(match.group(1)))
    except ValueError:
        return None


#: OME length units → µm.
_OME_UNITS = {"µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "micron": 1.0, "nm": 1e-3, "Å": 1e-4, "mm": 1e3, "cm": 1e4,
              "m": 1e6, "pm": 1e-6}


def mpp_from_ome_xml(xml: str) -> Optional[float]:
    """µm per pixel from OME-XML: the first ``Pixels`` element's ``PhysicalSizeX`` in ``PhysicalSizeXUnit``.

    The unit defaults to µm (the OME schema default); an unknown unit or a missing size gives ``None``.
    """
    if not xml or "PhysicalSizeX" not in xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for elem in root.iter():
        if elem.tag.rsplit("}", 1)[-1] == "Pixels" and "PhysicalSizeX" in elem.attrib:
            unit = elem.attrib.get("PhysicalSizeXUnit", "µm")
            if unit not in _OME_UNITS:
                return None
            try:
                return _plausible(float(elem.attrib["PhysicalSizeX"]) * _OME_UNITS[unit])
            except ValueError:
                return None
    return None


#: TIFF ResolutionUnit → µm per unit (1 = none: no absolute unit; 4, 5 are tifffile's mm/µm extensions).
_RESUNIT_UM = {2: 25400.0, 3: 1e4, 4: 1e3, 5: 1.0}


def mpp_from_tiff_resolution(x_resolution, resolution_unit) -> Optional[float]:
    """µm per pixel from the TIFF ``XResolution`` (pixels per unit; a number or a (num, den) rational) and
    ``ResolutionUnit`` (2 = inch, 3 = centimetre): mpp = µm per unit / pixels per unit.

    ``None`` when the unit is 1 (none), the resolution is zero, or the result is implausible (see module doc).
    """
    if x_resolution is None or resolution_unit is None:
        return None
    if isinstance(x_resolution, (tuple, list)):
        num, den = x_resolution
        if not den:
            return None
        x_resolution = num / den
    unit = _RESUNIT_UM.get(int(resolution_unit))
    if unit is None or not x_resolution:
        return None
    return _plausible(unit / float(x_resolution))


# ------------------------------------------------------------------------------------------ backends
def _as_rgb(region: np.ndarray) -> np.ndarray:
    """(h, w[, c]) integer/float image → (h, w, 3) uint8 (grey replicated, alpha dropped)."""
    if region.ndim == 2:
        region = region[..., None]
    if region.shape[2] == 1:
        region = np.repeat(region, 3, axis=2)
    elif region.shape[2] > 3:
        region = region[..., :3]
    if region.dtype != np.uint8:
        if region.dtype == np.uint16:
            region = region / 257.0
        elif np.issubdtype(region.dtype, np.floating) and region.size and region.max() <= 1.0:
            region = region * 255.0
        region = np.clip(np.rint(region), 0, 255).astype(np.uint8)
    return region


class _TiffBackend:
    """Levels of ``series[0]`` of a TIFF, each read through tifffile's zarr store (tile by tile)."""

    name = "tifffile"

    def __init__(self, path: Path):
        import tifffile
        import zarr

        try:
            self.tif = tifffile.TiffFile(path)
            series = self.tif.series[0]
            self.levels = []
            for i, level in enumerate(series.levels):
                axes = level.axes
                if "Y" not in axes or "X" not in axes:
                    raise SlideFormatError(f"TIFF image {path} has axes {axes!r}; expected Y and X")
                # series.aszarr(level=i) is one level's array (the series' own store is a multiscale group).
                self.levels.append((zarr.open(series.aszarr(level=i), mode="r"), axes))
        except SlideFormatError:
            raise
        except Exception as err:  # tifffile/zarr raise many types for junk input
            raise SlideFormatError(f"cannot read whole-slide TIFF {path}: {err}") from err
        self.path = path
        self.dimensions = []
        for array, axes in self.levels:
            self.dimensions.append((int(array.shape[axes.index("X")]), int(array.shape[axes.index("Y")])))

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Level pixels [y, y+h) × [x, x+w), all inside the level, as (h, w, 3) uint8."""
        array, axes = self.levels[level]
        index, kept = [], []
        for ax in axes:
            if ax == "Y":
                index.append(slice(y, y + h))
                kept.append(ax)
            elif ax == "X":
                index.append(slice(x, x + w))
                kept.append(ax)
            elif ax in "SC":
                index.append(slice(None))
                kept.append(ax)
            else:  # Z, T, …: the first plane (brightfield slides have one)
                index.append(0)
        try:
            region = np.asarray(array[tuple(index)])
        except Exception as err:
            hint = (" (its tiles need the imagecodecs package: pip install imagecodecs, or open it with "
                    f"openslide: {_OPENSLIDE_HINT})") if "imagecodecs" in str(err) else ""
            raise SlideFormatError(f"cannot decode level {level} of {self.path}: {err}{hint}") from err
        order = [kept.index("Y"), kept.index("X")] + [i for i, ax in enumerate(kept) if ax not in "YX"]
        return _as_rgb(np.transpose(region, order))

    def mpp(self) -> tuple[Optional[float], str]:
        page = self.tif.pages[0]
        found = mpp_from_aperio_description(page.description)
        if found:
            return found, "Aperio ImageDescription MPP"
        if self.tif.is_ome:
            found = mpp_from_ome_xml(self.tif.ome_metadata or "")
            if found:
                return found, "OME-XML PhysicalSizeX"
        tags = page.tags
        xres, unit = tags.get("XResolution"), tags.get("ResolutionUnit")
        found = mpp_from_tiff_resolution(xres.value if xres else None, unit.value if unit else None)
        if found:
            yres = tags.get("YResolution")
            found_y = mpp_from_tiff_resolution(yres.value if yres else None, unit.value)
            if found_y and abs(found_y - found) > 0.01 * found:
                warnings.warn(f"{self.path}: X and Y pixel sizes differ ({found:g} vs {found_y:g} µm); using X",
                              UserWarning, stacklevel=4)
            return found, "TIFF XResolution/ResolutionUnit"
        return None, ""

    def close(self) -> None:
        self.tif.close()


class _OpenSlideBackend:
    name = "openslide"

    def __init__(self, path: Path):
        import openslide

        try:
            self.slide = openslide.OpenSlide(str(path))
        except Exception as err:  # OpenSlideUnsupportedFormatError, OpenSlideError
            raise SlideFormatError(f"openslide cannot open whole-slide image {path}: {err}") from err
        self.path = path
        self.dimensions = [tuple(int(v) for v in d) for d in self.slide.level_dimensions]
        self.downsamples = [float(d) for d in self.slide.level_downsamples]

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        ds = self.downsamples[level]
        try:
            rgba = np.asarray(self.slide.read_region((int(round(x * ds)), int(round(y * ds))), level, (w, h)))
        except Exception as err:
            raise SlideFormatError(f"openslide cannot read level {level} of {self.path}: {err}") from err
        # openslide returns premultiplied-alpha RGBA, transparent (0) where the scanner wrote nothing:
        # composite on white, the colour of empty glass.
        alpha = rgba[..., 3:4].astype(np.uint16)
        return (rgba[..., :3].astype(np.uint16) + (255 - alpha)).clip(0, 255).astype(np.uint8)

    def mpp(self) -> tuple[Optional[float], str]:
        props = self.slide.properties
        for key in ("openslide.mpp-x", "aperio.MPP"):
            if key in props:
                found = _plausible(_float_or_none(props[key]))
                if found:
                    return found, f"openslide property {key}"
        found = mpp_from_tiff_resolution(_float_or_none(props.get("tiff.XResolution")),
                                         {"inch": 2, "centimeter": 3}.get(props.get("tiff.ResolutionUnit", "")))
        return (found, "TIFF XResolution/ResolutionUnit (openslide)") if found else (None, "")

    def close(self) -> None:
        self.slide.close()


def _float_or_none(value) -> Optional[float]:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------------------------------------------ the image
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
        (H, W, 3) of level 0, like :class:`~stgraph.data.patches.ArrayImage`.
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
        ``"tifffile"`` or ``"openslide"``.
    """

    def __init__(self, path: str | os.PathLike, mpp: Optional[float] = None, backend: str = "auto",
                 require_mpp: bool = True):
        path = require_file(path, "whole-slide image")
        self.path = path
        self.source = str(path)
        suffix = path.suffix.lower()
        if backend not in ("auto", "tifffile", "openslide"):
            raise ValueError(f"backend must be 'auto', 'tifffile' or 'openslide', got {backend!r}")
        if backend == "auto":
            backend = "openslide" if (suffix in _OPENSLIDE_FIRST and openslide_available()) else "tifffile"
        if backend == "tifffile" and suffix in _OPENSLIDE_ONLY:
            raise SlideFormatError(f"{path}: {suffix} slides are read with openslide, which is not installed "
                                   f"({_OPENSLIDE_HINT})")
        if backend == "openslide" and not openslide_available():
            raise SlideFormatError(f"{path}: backend='openslide' but openslide is not importable ({_OPENSLIDE_HINT})")
        self._backend = _OpenSlideBackend(path) if backend == "openslide" else _TiffBackend(path)
        self.backend = backend
        self.level_dimensions: list[tuple[int, int]] = list(self._backend.dimensions)
        self.level_count = len(self.level_dimensions)
        w0, h0 = self.level_dimensions[0]
        if w0 <= 0 or h0 <= 0:
            raise SlideFormatError(f"whole-slide image {path} has an empty level 0 ({w0} × {h0} px)")
        self.shape = (int(h0), int(w0), 3)
        if isinstance(self._backend, _OpenSlideBackend):
            self.level_downsamples = list(self._backend.downsamples)
        else:
            self.level_downsamples = [(w0 / w + h0 / h) / 2.0 for w, h in self.level_dimensions]
        if mpp is not None:
            if not (np.isfinite(mpp) and mpp > 0):
                raise ValueError(f"mpp must be a positive number of µm per pixel, got {mpp}")
            if _plausible(mpp) is None:  # 1e6 µm/px would ask for petabytes of patches
                raise ValueError(f"mpp {mpp:g} µm per pixel is outside the range of microscope images "
                                 f"({_MPP_RANGE[0]:g}–{_MPP_RANGE[1]:g} µm/px); check --mpp")
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
        """Level-0 pixels ``[y0:y1, x0:x1]`` as (y1 − y0, x1 − x0, 3) uint8 (the ``FullResImage`` protocol)."""
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
