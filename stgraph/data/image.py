"""Image I/O in one place: open and size image files (PIL, tifffile for large TIFFs), thumbnails, and the
full-resolution image of a slide as a croppable object (in memory, lazily from disk, or upsampled from a
scaled image as a last resort, with a warning).
"""
from __future__ import annotations

import contextlib
import functools
import os
import warnings
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from anndata import AnnData

from .errors import SlideFormatError, require_file
from ..keys import Key

__all__ = [
    "fullres_size",
    "check_spots_on_image",
    "IMAGE_SUFFIXES",
    "ArrayImage",
    "PILImage",
    "ScaledImage",
    "open_image",
    "image_size",
    "thumbnail",
    "load_image_file",
    "load_fullres_image",
    "slide_library",
]

#: Suffixes of the image files readers pick up.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
_TIFF_SUFFIXES = (".tif", ".tiff")


@contextlib.contextmanager
def _no_pixel_limit() -> Iterator[None]:
    """Histology images exceed PIL's decompression-bomb limit (~89 Mpx) by design; lift it while reading."""
    from PIL import Image

    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


class GreyscaleImageWarning(UserWarning):
    """An image given as H&E has one channel: its patches will be grey in three channels, unlike any H&E."""


_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "P;L"}
_WARNED_GREY: set = set()


def warn_if_greyscale(path, mode_or_shape) -> None:
    """Warn once per file, naming it, when an image is greyscale (a PIL mode, or an array shape without a
    colour axis): it is converted to three equal channels, which no H&E training image looks like, so every
    prediction from it is out of distribution."""
    grey = (mode_or_shape in _GREY_MODES) if isinstance(mode_or_shape, str) else (
        len(mode_or_shape) == 2 or (len(mode_or_shape) == 3 and mode_or_shape[2] in (1, 2)))
    key = str(Path(path).resolve()) if path else ""
    if grey and key not in _WARNED_GREY:
        _WARNED_GREY.add(key)
        warnings.warn(f"image {path} is greyscale ({mode_or_shape if isinstance(mode_or_shape, str) else 'one channel'}): "
                      "H&E is a colour stain; its patches become three equal channels, unlike any training image, "
                      "so predictions from it are out of distribution", GreyscaleImageWarning, stacklevel=3)


def open_image(path: str | os.PathLike):
    """Open an image lazily with PIL (header only); :class:`SlideFormatError` if it is not an image."""
    from PIL import Image, UnidentifiedImageError

    path = require_file(path, "image file")
    try:
        with _no_pixel_limit():
            return Image.open(path)
    except (UnidentifiedImageError, OSError) as err:
        raise SlideFormatError(f"cannot read image {path}: {err}") from err


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image without decoding its pixels.

    TIFFs are read with :mod:`tifffile` (whole-slide TIFFs are often beyond PIL); other formats with PIL.
    """
    path = require_file(path, "image file")
    if path.suffix.lower() in _TIFF_SUFFIXES:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                shape = tif.series[0].levels[0].shape
                axes = tif.series[0].levels[0].axes
        except Exception as err:  # tifffile raises several types for junk input
            raise SlideFormatError(f"cannot read TIFF image {path}: {err}") from err
        return int(shape[axes.index("X")]), int(shape[axes.index("Y")])
    with open_image(path) as img:
        return tuple(int(v) for v in img.size)


_JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")
#: JPEG markers that carry a length field (everything but SOI, EOI, RSTn and TEM).
_STANDALONE = {0x01, 0xD8, 0xD9, *range(0xD0, 0xD8)}


@functools.lru_cache(maxsize=64)
def _jpeg_corruption(path: str, size: int, mtime_ns: int) -> Optional[str]:
    """Why the JPEG's byte stream is corrupt, or ``None``.

    libjpeg (through Pillow) decodes a JPEG with garbage inside its compressed data with no more than an
    internal warning, giving silently wrong pixels. In valid compressed data a 0xFF byte is followed only by
    0x00 (stuffing), 0xFF (fill), RSTn or a real marker; any other byte means the stream was damaged.
    """
    data = np.fromfile(path, dtype=np.uint8)
    if data.size < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return "no JPEG start-of-image marker"
    ff = np.flatnonzero(data[:-1] == 0xFF)
    nxt = data[ff + 1]
    candidates = ff[(nxt != 0x00) & (nxt != 0xFF) & ((nxt < 0xD0) | (nxt > 0xD7))]
    pos = 2
    for j in candidates:
        if j < pos:
            continue  # inside a marker segment already skipped
        marker = int(data[j + 1])
        if marker == 0xD9:
            return None
        if marker < 0xC0 and marker != 0x01:
            return f"invalid marker 0xFF{marker:02X} at byte {j} (damaged compressed data)"
        if marker in _STANDALONE:
            pos = j + 2
            continue
        if j + 3 >= data.size:
            return f"marker 0xFF{marker:02X} cut short at byte {j}"
        pos = j + 2 + (int(data[j + 2]) << 8 | int(data[j + 3]))
    return "no JPEG end-of-image marker (file truncated)"


def check_jpeg(path: str | os.PathLike) -> None:
    """Raise :class:`SlideFormatError` naming a JPEG whose compressed data is damaged (no-op for others)."""
    path = Path(path)
    if path.suffix.lower() not in _JPEG_SUFFIXES:
        return
    st = path.stat()
    why = _jpeg_corruption(str(path.resolve()), st.st_size, st.st_mtime_ns)
    if why:
        raise SlideFormatError(f"image {path} is a corrupt JPEG: {why}")


def thumbnail(path: Path, max_side: int) -> np.ndarray:
    """Decode ``path`` downscaled so its longest side is ≤ ``max_side`` (RGB uint8 (h, w, 3)).

    PIL's JPEG draft mode decodes at 1/2–1/8 scale directly, so this costs a fraction of a full decode.
    """
    if path.suffix.lower() in _TIFF_SUFFIXES:
        return load_image_file(path).thumbnail(max_side)
    check_jpeg(path)
    img = open_image(path)
    warn_if_greyscale(path, img.mode)
    try:
        with _no_pixel_limit():
            img.thumbnail((max_side, max_side))
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as err:  # truncated or corrupt pixel data
        raise SlideFormatError(f"cannot decode image {path}: {err}") from err
    finally:
        img.close()


def to_rgb(region: np.ndarray) -> np.ndarray:
    """(h, w[, c]) any integer/float image → (h, w, 3) uint8 (grey replicated, alpha dropped; uint16 scaled,
    floats in [0, 1] scaled): the one conversion of every image and whole-slide reader."""
    if region.ndim == 2:
        region = np.repeat(region[..., None], 3, axis=2)
    elif region.shape[2] == 1:
        region = np.repeat(region, 3, axis=2)
    elif region.shape[2] > 3:
        region = region[..., :3]
    if region.dtype != np.uint8:
        if np.issubdtype(region.dtype, np.floating) and region.size and region.max() <= 1.0:
            region = region * 255.0  # float images in [0, 1] (e.g. PNGs read by matplotlib)
        elif region.dtype == np.uint16:
            region = region / 257.0
        region = np.clip(np.rint(region), 0, 255).astype(np.uint8)
    return region


class ArrayImage:
    """An (H, W[, C]) array-like (numpy array, memmap or zarr array) seen as an RGB image.

    Attributes
    ----------
    shape
        (H, W, 3).
    """

    def __init__(self, array, source: str = "array"):
        if array.ndim not in (2, 3):
            raise SlideFormatError(f"image {source} must be (H, W) or (H, W, C); got shape {array.shape}")
        self.array = array
        self.source = source
        self.shape = (int(array.shape[0]), int(array.shape[1]), 3)

    def crop(self, x0: int, y0: int, x1: int, y1: int, pad_value: int = 255) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` as (y1 − y0, x1 − x0, 3) uint8; the part outside the image is ``pad_value``."""
        out = np.full((y1 - y0, x1 - x0, 3), pad_value, dtype=np.uint8)
        height, width = self.shape[:2]
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        if sx1 > sx0 and sy1 > sy0:
            out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = to_rgb(np.asarray(self.array[sy0:sy1, sx0:sx1]))
        return out

    def thumbnail(self, max_side: int) -> np.ndarray:
        """A strided downscale whose longest side is ≤ ``max_side`` (reads only the sampled pixels)."""
        step = max(1, int(np.ceil(max(self.shape[:2]) / max_side)))
        return to_rgb(np.asarray(self.array[::step, ::step]))


class PILImage:
    """A decoded PIL RGB image; crops are read from PIL's own buffer.

    Converting a whole-slide image to a NumPy array would copy it (PIL's ``tobytes`` even holds it twice
    while joining chunks); cropping from the PIL image keeps one copy in memory.

    Attributes
    ----------
    shape
        (H, W, 3).
    """

    def __init__(self, image, source: str = "image"):
        if image.mode != "RGB":
            image = image.convert("RGB")
        self.pil = image
        self.source = source
        width, height = image.size
        self.shape = (int(height), int(width), 3)

    def crop(self, x0: int, y0: int, x1: int, y1: int, pad_value: int = 255) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` as (y1 − y0, x1 − x0, 3) uint8; the part outside the image is ``pad_value``."""
        out = np.full((y1 - y0, x1 - x0, 3), pad_value, dtype=np.uint8)
        height, width = self.shape[:2]
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        if sx1 > sx0 and sy1 > sy0:
            out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = np.asarray(self.pil.crop((sx0, sy0, sx1, sy1)))
        return out

    def thumbnail(self, max_side: int) -> np.ndarray:
        """A downscaled copy whose longest side is ≤ ``max_side``."""
        thumb = self.pil.copy()
        thumb.thumbnail((max_side, max_side))
        return np.asarray(thumb, dtype=np.uint8)


class ScaledImage:
    """A smaller copy of the full-resolution image (e.g. Visium ``hires``), seen in full-resolution pixels.

    Parameters
    ----------
    array
        (h, w[, C]) image.
    scale
        Image pixels per full-resolution pixel (``tissue_hires_scalef``), in (0, ∞).

    Attributes
    ----------
    shape
        (round(h / scale), round(w / scale), 3): the full-resolution extent.
    """

    def __init__(self, array, scale: float, source: str = "array"):
        if not (np.isfinite(scale) and scale > 0):
            raise SlideFormatError(f"image {source}: scale factor must be positive, got {scale}")
        self.image = ArrayImage(array, source=source)
        self.scale = float(scale)
        self.source = source
        h, w = self.image.shape[:2]
        self.shape = (int(round(h / self.scale)), int(round(w / self.scale)), 3)

    def crop(self, x0: int, y0: int, x1: int, y1: int, pad_value: int = 255) -> np.ndarray:
        """Full-resolution box ``[y0:y1, x0:x1]`` as (y1 − y0, x1 − x0, 3) uint8, resampled from the small image.

        The box maps to ``[x0·scale, x1·scale)`` in the small image; a one-pixel margin is read around it
        (padded with ``pad_value`` outside) so bilinear resampling (PIL, sub-pixel ``box``) has its neighbours.
        """
        from PIL import Image

        s = self.scale
        bx0, by0, bx1, by1 = x0 * s, y0 * s, x1 * s, y1 * s
        ix0, iy0 = int(np.floor(bx0)) - 1, int(np.floor(by0)) - 1
        ix1, iy1 = int(np.ceil(bx1)) + 1, int(np.ceil(by1)) + 1
        region = self.image.crop(ix0, iy0, ix1, iy1, pad_value=pad_value)
        box = (bx0 - ix0, by0 - iy0, bx1 - ix0, by1 - iy0)
        out = Image.fromarray(region).resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR, box=box)
        return np.asarray(out)


def _open_tiff(path: Path):
    """A memmap of the TIFF's first (full-resolution) level when uncompressed, else a zarr array."""
    import tifffile

    try:
        return tifffile.memmap(path, mode="r")
    except Exception:  # compressed or tiled: fall through to the zarr store, which reads chunk by chunk
        pass
    try:
        import zarr

        store = tifffile.imread(path, aszarr=True, level=0)
        return zarr.open(store, mode="r")
    except Exception as err:
        raise SlideFormatError(f"cannot read TIFF image {path}: {err}") from err


def load_image_file(path: str | os.PathLike) -> ArrayImage | PILImage:
    """Open an image file for cropping.

    TIFFs stay on disk (memmap/zarr, :class:`ArrayImage`); other formats are decoded once with PIL (RGB,
    :class:`PILImage`). Raises
    :class:`FileNotFoundError` when missing and :class:`SlideFormatError` (naming the file) when the file
    cannot be decoded.
    """

    path = require_file(path, "full-resolution image")
    if path.suffix.lower() in _TIFF_SUFFIXES:
        array = _open_tiff(path)
        if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[2] not in (3, 4):
            raise SlideFormatError(f"TIFF image {path} is channel-first {array.shape}; expected (H, W, C)")
        warn_if_greyscale(path, tuple(array.shape))
        return ArrayImage(array, source=str(path))
    check_jpeg(path)
    img = open_image(path)
    warn_if_greyscale(path, img.mode)
    try:
        with _no_pixel_limit():
            img.load()  # decode once, now, so a corrupt file fails here with its name
            if img.mode != "RGB":
                img = img.convert("RGB")
    except (OSError, ValueError, SyntaxError) as err:
        img.close()
        raise SlideFormatError(f"cannot decode image {path}: {err}") from err
    return PILImage(img, source=str(path))


def fullres_size(adata: AnnData) -> Optional[tuple[float, float, float]]:
    """``(width, height, tolerance)`` of a slide's full-resolution image in its pixels, from what the slide
    holds (no pixel decoded): ``metadata['fullres_shape']``, the source image file's header, an in-memory
    ``fullres`` image, or a ``hires``/``lowres`` image and its scale factor (then only to about 2 %, the
    tolerance). ``None`` when the slide has no image at all."""
    try:
        _, entry = slide_library(adata)
    except Exception:  # no uns['spatial']
        return None
    meta, images, sf = entry.get(Key.uns.metadata, {}), entry.get(Key.uns.images, {}), entry.get(Key.uns.scalefactors, {})
    shape = meta.get(Key.metadata.fullres_shape)
    if shape is not None and len(shape) >= 2:
        return float(shape[1]), float(shape[0]), 1.0
    source = meta.get(Key.metadata.source_image_path)
    if source and Path(source).is_file():
        try:
            w, h = image_size(source)
            return float(w), float(h), 1.0
        except SlideFormatError:
            return None
    if Key.image.fullres in images:
        scale = float(sf.get(Key.scalefactor.fullres, 1.0)) or 1.0
        h, w = np.asarray(images[Key.image.fullres]).shape[:2]
        return w / scale, h / scale, 1.0 / scale
    for name, key in ((Key.image.hires, Key.scalefactor.hires), (Key.image.lowres, Key.scalefactor.lowres)):
        if name in images and sf.get(key):
            h, w = np.asarray(images[name]).shape[:2]
            scale = float(sf[key])
            return w / scale, h / scale, 0.02 * max(w, h) / scale
    return None


def check_spots_on_image(adata: AnnData, source: str) -> None:
    """Refuse (:class:`SlideFormatError`, naming ``source``) a slide with spot centres outside its image:
    their patches would be padding, every such spot the same prediction. A slide without an image is left to
    the steps that need one."""
    size = fullres_size(adata)
    if size is None or Key.obsm.spatial not in adata.obsm or adata.n_obs == 0:
        return
    w, h, tol = size
    xy = np.asarray(adata.obsm[Key.obsm.spatial], dtype=np.float64)
    outside = (xy[:, 0] < -tol) | (xy[:, 0] > w + tol) | (xy[:, 1] < -tol) | (xy[:, 1] > h + tol)
    if outside.any():
        first = np.flatnonzero(outside)[:3]
        examples = ", ".join(f"({xy[i, 0]:.1f}, {xy[i, 1]:.1f})" for i in first)
        how = "all" if outside.all() else f"{int(outside.sum())} of {len(xy)}"
        raise SlideFormatError(f"{source}: {how} spot centres lie outside its image of {w:.0f} × {h:.0f} px (width × "
                               f"height), e.g. {examples}: obsm['spatial'] must be x, y in full-resolution pixels "
                               "of the image (are the coordinates scaled, swapped or of another image?)")


def slide_library(adata: AnnData) -> tuple[str, dict]:
    """(library id, ``uns['spatial'][library id]``) of a one-slide AnnData."""
    spatial = adata.uns.get(Key.uns.spatial, {})
    if len(spatial) == 1:
        lib = next(iter(spatial))
        return str(lib), spatial[lib]
    if Key.obs.slide_id in adata.obs and adata.n_obs:
        lib = str(adata.obs[Key.obs.slide_id].iloc[0])
        if lib in spatial:
            return lib, spatial[lib]
    raise SlideFormatError(f"cannot find the slide's image: uns['spatial'] has libraries {list(spatial)}; "
                           "expected exactly one (one slide per AnnData)")


def _scaled_fallback(entry: dict) -> Optional[tuple[str, np.ndarray, float]]:
    """(name, image, scale factor) of the largest stored downscaled image that has its scale factor."""
    images, scalefactors = entry.get(Key.uns.images, {}), entry.get(Key.uns.scalefactors, {})
    for name in ("hires", "lowres"):
        if name in images and f"tissue_{name}_scalef" in scalefactors:
            return name, np.asarray(images[name]), float(scalefactors[f"tissue_{name}_scalef"])
    return None


def load_fullres_image(adata: AnnData) -> ArrayImage | PILImage | ScaledImage:
    """The slide's full-resolution image: ``.shape`` (H, W, 3) and ``.crop(x0, y0, x1, y1, pad_value)``.

    In order of preference:

    1. ``images['fullres']`` (in memory, e.g. synthetic slides) → :class:`ArrayImage`;
    2. ``metadata['source_image_path']``: JPEG/PNG decoded once → :class:`PILImage`; TIFF memory-mapped
       → :class:`ArrayImage`;
    3. ``images['hires']`` with ``tissue_hires_scalef`` (else ``lowres``) → :class:`ScaledImage`, which
       crops in full-resolution units by upsampling the smaller image (a :class:`UserWarning` says so).

    Raises
    ------
    SlideFormatError
        No image at all, or the image file cannot be decoded (the message names the file).
    FileNotFoundError
        ``source_image_path`` is set but the file is missing.
    """
    import warnings

    lib, entry = slide_library(adata)
    images = entry.get(Key.uns.images, {})
    if "fullres" in images:
        return ArrayImage(np.asarray(images[Key.image.fullres]), source=f"uns['spatial'][{lib!r}]['images']['fullres']")
    source = entry.get(Key.uns.metadata, {}).get(Key.metadata.source_image_path)
    if source:
        return load_image_file(source)
    fallback = _scaled_fallback(entry)
    if fallback is None:
        raise SlideFormatError(
            f"slide {lib!r} has no full-resolution image: neither images['fullres'], "
            "metadata['source_image_path'] nor images['hires'] with scalefactors['tissue_hires_scalef'] is set "
            "in uns['spatial'] (pass the image to the reader, e.g. read_visium(..., fullres_image=PATH))"
        )
    name, array, scale = fallback
    warnings.warn(f"slide {lib!r} has no full-resolution image; patches are upsampled from images[{name!r}] "
                  f"(scale factor {scale:g})", UserWarning, stacklevel=2)
    return ScaledImage(array, scale, source=f"uns['spatial'][{lib!r}]['images'][{name!r}]")
