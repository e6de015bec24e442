"""Image patches centred on spots, their on-disk cache, ImageNet normalisation and dihedral augmentation.

The full-resolution image of a slide comes from ``uns['spatial'][lib]['images']['fullres']`` (small
in-memory images, e.g. synthetic slides) or from ``uns['spatial'][lib]['metadata']['source_image_path']``
(JPEG/PNG decoded once per call with PIL; TIFF opened lazily with :mod:`tifffile` as a memory map or a zarr
store, so only the crops are read).

Visium slides read without their full-resolution image (Space Ranger ships only ``hires``/``lowres`` PNGs)
fall back to ``images['hires']`` (else ``lowres``) and its ``tissue_hires_scalef`` (``tissue_lowres_scalef``):
:class:`ScaledImage` maps each full-resolution crop box onto the smaller image and resamples it bilinearly
back to full-resolution pixel units, so patches stay centred on ``obsm['spatial']`` and keep their physical
size, with the detail of the smaller image (hires is ~2000 px across, about 4–7 µm per pixel).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Optional, Protocol

import numpy as np
import torch
from anndata import AnnData

from .errors import SlideFormatError, require_file
from .transforms import (IMAGENET_MEAN, IMAGENET_STD, RandomFlipRotate, hash_array,  # noqa: F401 (re-exported)
                         imagenet_normalize, random_flip_rotate)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "FullResImage",
    "ArrayImage",
    "PILImage",
    "ScaledImage",
    "load_fullres_image",
    "load_image_file",
    "extract_patches",
    "patch_cache_path",
    "imagenet_normalize",
    "random_flip_rotate",
    "RandomFlipRotate",
    "slide_library",
]

_TIFF_SUFFIXES = (".tif", ".tiff")


class FullResImage(Protocol):
    """A full-resolution RGB image that can be cropped without holding more than it must."""

    shape: tuple[int, int, int]

    def crop(self, x0: int, y0: int, x1: int, y1: int, pad_value: int = 255) -> np.ndarray:
        ...


def _to_rgb(region: np.ndarray) -> np.ndarray:
    """(h, w[, c]) any integer/float image → (h, w, 3) uint8 (grey replicated, alpha dropped)."""
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
            out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = _to_rgb(np.asarray(self.array[sy0:sy1, sx0:sx1]))
        return out

    def thumbnail(self, max_side: int) -> np.ndarray:
        """A strided downscale whose longest side is ≤ ``max_side`` (reads only the sampled pixels)."""
        step = max(1, int(np.ceil(max(self.shape[:2]) / max_side)))
        return _to_rgb(np.asarray(self.array[::step, ::step]))


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
    from .readers import open_image, _no_pixel_limit

    path = require_file(path, "full-resolution image")
    if path.suffix.lower() in _TIFF_SUFFIXES:
        array = _open_tiff(path)
        if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[2] not in (3, 4):
            raise SlideFormatError(f"TIFF image {path} is channel-first {array.shape}; expected (H, W, C)")
        return ArrayImage(array, source=str(path))
    img = open_image(path)
    try:
        with _no_pixel_limit():
            img.load()  # decode once, now, so a corrupt file fails here with its name
            if img.mode != "RGB":
                img = img.convert("RGB")
    except (OSError, ValueError, SyntaxError) as err:
        img.close()
        raise SlideFormatError(f"cannot decode image {path}: {err}") from err
    return PILImage(img, source=str(path))


def slide_library(adata: AnnData) -> tuple[str, dict]:
    """(library id, ``uns['spatial'][library id]``) of a one-slide AnnData."""
    spatial = adata.uns.get("spatial", {})
    if len(spatial) == 1:
        lib = next(iter(spatial))
        return str(lib), spatial[lib]
    if "slide_id" in adata.obs and adata.n_obs:
        lib = str(adata.obs["slide_id"].iloc[0])
        if lib in spatial:
            return lib, spatial[lib]
    raise SlideFormatError(f"cannot find the slide's image: uns['spatial'] has libraries {list(spatial)}; "
                           "expected exactly one (one slide per AnnData)")


def _scaled_fallback(entry: dict) -> Optional[tuple[str, np.ndarray, float]]:
    """(name, image, scale factor) of the largest stored downscaled image that has its scale factor."""
    images, scalefactors = entry.get("images", {}), entry.get("scalefactors", {})
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
    images = entry.get("images", {})
    if "fullres" in images:
        return ArrayImage(np.asarray(images["fullres"]), source=f"uns['spatial'][{lib!r}]['images']['fullres']")
    source = entry.get("metadata", {}).get("source_image_path")
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


def _fullres_scale(entry: dict) -> float:
    """Pixels of the crop source per full-resolution pixel (``tissue_fullres_scalef`` for in-memory images)."""
    if "fullres" in entry.get("images", {}):
        return float(entry.get("scalefactors", {}).get("tissue_fullres_scalef", 1.0))
    return 1.0


def _crop_side(size: int, patch_um: Optional[float], microns_per_pixel: Optional[float], entry: dict,
               scale: float) -> int:
    if patch_um is None:
        return size
    mpp = microns_per_pixel if microns_per_pixel is not None else entry.get("metadata", {}).get("microns_per_pixel")
    if mpp is None:
        raise ValueError(f"patch_um={patch_um} needs the pixel size: pass microns_per_pixel or set "
                         "uns['spatial'][lib]['metadata']['microns_per_pixel']")
    if mpp <= 0 or patch_um <= 0:
        raise ValueError(f"patch_um ({patch_um}) and microns_per_pixel ({mpp}) must be positive")
    return max(1, int(round(patch_um / float(mpp) * scale)))


def patch_cache_path(cache_dir: str | os.PathLike, slide_id: str, size: int, patch_um: Optional[float] = None,
                     xy: Optional[np.ndarray] = None) -> Path:
    """``cache_dir/<slide_id>_<size>[_<um>um][_<coords hash>].npy`` (slide id made file-name safe).

    ``xy`` (n, 2) spot centres add a 16-hex-digit BLAKE2b hash of the coordinates, so subsets or moved
    spots of one slide get their own entry.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", slide_id)
    um = f"_{patch_um:g}um" if patch_um is not None else ""
    coords = f"_{hash_array(np.asarray(xy, dtype=np.float64))}" if xy is not None else ""
    return Path(cache_dir) / f"{safe}_{size}{um}{coords}.npy"


def _cache_key(adata: AnnData, entry: dict, xy: np.ndarray, size: int, side: int, pad_value: int) -> dict:
    images = entry.get("images", {})
    source = entry.get("metadata", {}).get("source_image_path")
    fallback = _scaled_fallback(entry)
    if "fullres" in images:
        image_id = "inmemory:" + hash_array(images["fullres"])
    elif source:
        source = Path(source)
        stat = source.stat() if source.is_file() else None
        image_id = f"{source.resolve()}:{stat.st_size}:{int(stat.st_mtime)}" if stat else f"{source}:missing"
    elif fallback is not None:
        image_id = f"{fallback[0]}:{fallback[2]!r}:" + hash_array(fallback[1])
    else:
        image_id = "none"
    return {"n_spots": int(adata.n_obs), "size": int(size), "crop_px": int(side), "pad_value": int(pad_value),
            "coords_hash": hash_array(np.asarray(xy, dtype=np.float64)), "image": image_id}


def _read_cache(path: Path, key: dict, n: int, size: int) -> Optional[np.ndarray]:
    meta = path.with_suffix(".json")
    if not (path.is_file() and meta.is_file()):
        return None
    try:
        if json.loads(meta.read_text()) != key:
            return None
        patches = np.load(path)
    except (OSError, ValueError, json.JSONDecodeError):
        return None  # a damaged cache entry is recomputed, never trusted
    return patches if patches.shape == (n, size, size, 3) and patches.dtype == np.uint8 else None


def _write_cache(path: Path, key: dict, patches: np.ndarray) -> None:
    from ..utils.io import atomic_save_npy, atomic_write_text

    atomic_save_npy(path, patches)
    atomic_write_text(path.with_suffix(".json"), json.dumps(key, indent=1))


def _resize(crop: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0))


def extract_patches(
    adata: AnnData,
    size: int = 224,
    patch_um: Optional[float] = None,
    microns_per_pixel: Optional[float] = None,
    pad_value: int = 255,
    cache_dir: Optional[str | os.PathLike] = None,
    show_progress: bool = False,
) -> np.ndarray:
    """Square RGB patches centred on the spots.

    The patch of spot ``i`` covers full-resolution pixels ``[c − s//2, c − s//2 + s)`` on each axis with
    ``c = floor(xy_i + 0.5)``, so the centre pixel lands at index ``(s//2, s//2)``; parts outside the image
    are ``pad_value`` (white).

    Parameters
    ----------
    adata
        One slide (``obsm['spatial']`` + an image, see :func:`load_fullres_image`).
    size
        Output side in pixels.
    patch_um
        Physical side of a patch; the crop is ``s = patch_um / microns_per_pixel`` pixels, resized to
        ``size``. ``None``: crop ``size`` pixels, no resizing.
    microns_per_pixel
        Default: ``metadata['microns_per_pixel']``.
    cache_dir
        Store the result as ``<cache_dir>/<slide_id>_<size>[_<um>um]_<coords hash>.npy`` (written
        atomically, + a ``.json`` key holding the crop size, pad value and image identity) and reuse it
        while the key matches.
    show_progress
        Show a tqdm progress bar over the spots.

    Returns
    -------
    (n_spots, size, size, 3) uint8.
    """
    if size < 1:
        raise ValueError(f"patch size must be ≥ 1, got {size}")
    lib, entry = slide_library(adata)
    if "spatial" not in adata.obsm:
        raise SlideFormatError(f"slide {lib!r} has no obsm['spatial']")
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise SlideFormatError(f"slide {lib!r}: obsm['spatial'] must be (n_spots, 2); got shape {xy.shape}")
    if len(xy) == 0:
        raise SlideFormatError(f"slide {lib!r} has no spots: nothing to extract patches for")
    if not np.isfinite(xy).all():
        raise SlideFormatError(f"slide {lib!r}: obsm['spatial'] holds non-finite coordinates")
    scale = _fullres_scale(entry)
    side = _crop_side(size, patch_um, microns_per_pixel, entry, scale)

    cache_path = key = None
    if cache_dir is not None:
        slide_id = str(adata.obs["slide_id"].iloc[0]) if "slide_id" in adata.obs and adata.n_obs else lib
        cache_path = patch_cache_path(cache_dir, slide_id, size, patch_um, xy=xy)
        key = _cache_key(adata, entry, xy, size, side, pad_value)
        cached = _read_cache(cache_path, key, adata.n_obs, size)
        if cached is not None:
            return cached

    image = load_fullres_image(adata)
    centres = np.floor(xy * scale + 0.5).astype(np.int64)
    half = side // 2
    patches = np.empty((adata.n_obs, size, size, 3), dtype=np.uint8)
    from tqdm.auto import tqdm

    for i in tqdm(range(adata.n_obs), desc=f"patches {lib}", disable=not show_progress, leave=False):
        x0, y0 = centres[i, 0] - half, centres[i, 1] - half
        crop = image.crop(int(x0), int(y0), int(x0 + side), int(y0 + side), pad_value=pad_value)
        patches[i] = crop if side == size else _resize(crop, size)
    if cache_path is not None:
        _write_cache(cache_path, key, patches)
    return patches
