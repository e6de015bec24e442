"""Image patches centred on spots and their on-disk cache (the images they are cut from: :mod:`.image`;
ImageNet normalisation and dihedral augmentation: :mod:`.transforms`).

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
from typing import Optional

import numpy as np
from anndata import AnnData

from .errors import SlideFormatError
from .slide_id import slide_id_of
from .image import _scaled_fallback, load_fullres_image, slide_library
from .transforms import hash_array
from ..keys import Key

__all__ = ["extract_patches", "patch_cache_path", "patch_key", "RegionPatches"]


def _fullres_scale(entry: dict) -> float:
    """Pixels of the crop source per full-resolution pixel (``tissue_fullres_scalef`` for in-memory images)."""
    if "fullres" in entry.get(Key.uns.images, {}):
        return float(entry.get(Key.uns.scalefactors, {}).get(Key.scalefactor.fullres, 1.0))
    return 1.0


def _crop_side(size: int, patch_um: Optional[float], microns_per_pixel: Optional[float], entry: dict,
               scale: float) -> int:
    if patch_um is None:
        return size
    mpp = microns_per_pixel if microns_per_pixel is not None else entry.get(Key.uns.metadata, {}).get(Key.metadata.microns_per_pixel)
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
    images = entry.get(Key.uns.images, {})
    source = entry.get(Key.uns.metadata, {}).get(Key.metadata.source_image_path)
    fallback = _scaled_fallback(entry)
    if "fullres" in images:
        image_id = "inmemory:" + hash_array(images[Key.image.fullres])
    elif source:
        from ..utils.io import file_fingerprint

        source = Path(source)
        # The image's content, not its name, size and mtime: a file replaced under the same name, size and
        # mtime (cp -p, rsync -t) is another image.
        image_id = f"file:{file_fingerprint(source)}" if source.is_file() else f"{source}:missing"
    elif fallback is not None:
        image_id = f"{fallback[0]}:{fallback[2]!r}:" + hash_array(fallback[1])
    else:
        image_id = "none"
    return {"n_spots": int(adata.n_obs), "size": int(size), "crop_px": int(side), "pad_value": int(pad_value),
            "coords_hash": hash_array(np.asarray(xy, dtype=np.float64)), "image": image_id}


def patch_key(adata: AnnData, size: int, patch_um: Optional[float] = None,
              microns_per_pixel: Optional[float] = None, pad_value: int = 255) -> dict:
    """What :func:`extract_patches` with these arguments depends on, without cutting a patch: the number of
    spots, output and crop side, pad value, the coordinates' hash and the image's identity (an in-memory
    image's hash; an image file's content fingerprint, :func:`~stgraph.utils.io.file_fingerprint`). Cache keys
    of patches and of their features."""
    lib, entry = slide_library(adata)
    xy = np.asarray(adata.obsm[Key.obsm.spatial], dtype=np.float64)
    side = _crop_side(size, patch_um, microns_per_pixel, entry, _fullres_scale(entry))
    return _cache_key(adata, entry, xy, size, side, pad_value)


def _read_cache(path: Path, key: dict, n: int, size: int) -> Optional[np.ndarray]:
    meta = path.with_suffix(".json")
    if not (path.is_file() and meta.is_file()):
        return None
    from ..utils.io import bytes_digest

    try:
        record = json.loads(meta.read_text())
        if not isinstance(record, dict) or record.get("key") != key:
            return None
        if record.get("sha256") != bytes_digest(path):  # a damaged or replaced file: recomputed, never trusted
            return None
        patches = np.load(path)
    except (OSError, ValueError, json.JSONDecodeError):
        return None  # a damaged cache entry is recomputed, never trusted
    if patches.shape == (n, size, size, 3) and patches.dtype == np.uint8:
        import logging

        logging.getLogger(__name__).debug("patch cache hit: %s", path)
        return patches
    return None


def _write_cache(path: Path, key: dict, patches: np.ndarray) -> None:
    from ..utils.io import atomic_save_npy, atomic_write_text, bytes_digest, check_free_space

    check_free_space(path, patches.nbytes, what="patch cache entry")
    atomic_save_npy(path, patches)
    # The key and the checksum of the bytes written, checked on every read.
    atomic_write_text(path.with_suffix(".json"), json.dumps({"key": key, "sha256": bytes_digest(path)}, indent=1))
    import logging

    from ..utils.cache import folder_size

    logging.getLogger("stgraph").info("patch cache: wrote %s (%.1f MB); %s holds %.1f MB (data.cache_dir; "
                                      "null turns it off)", path.name, path.stat().st_size / 1e6, path.parent,
                                      folder_size(path.parent) / 1e6)


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
    if Key.obsm.spatial not in adata.obsm:
        raise SlideFormatError(f"slide {lib!r} has no obsm['spatial']")
    xy = np.asarray(adata.obsm[Key.obsm.spatial], dtype=np.float64)
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
        slide_id = slide_id_of(adata, default=lib)
        cache_path = patch_cache_path(cache_dir, slide_id, size, patch_um, xy=xy)
        key = _cache_key(adata, entry, xy, size, side, pad_value)
        cached = _read_cache(cache_path, key, adata.n_obs, size)
        if cached is not None:
            _warn_if_uniform(cached, entry, lib)
            return cached

    image = load_fullres_image(adata)
    centres = np.floor(xy * scale + 0.5).astype(np.int64)
    half = side // 2
    patches = np.empty((adata.n_obs, size, size, 3), dtype=np.uint8)
    from tqdm.auto import tqdm

    for i in tqdm(range(adata.n_obs), desc=f"patches {lib}", unit="patch", disable=not show_progress,
                  leave=False):
        x0, y0 = centres[i, 0] - half, centres[i, 1] - half
        crop = image.crop(int(x0), int(y0), int(x0 + side), int(y0 + side), pad_value=pad_value)
        patches[i] = crop if side == size else _resize(crop, size)
    _warn_if_uniform(patches, entry, lib)
    if cache_path is not None:
        _write_cache(cache_path, key, patches)
    return patches


def _warn_if_uniform(patches: np.ndarray, entry: dict, lib: str) -> None:
    """Warn, naming the image, when every patch is one flat colour (a blank image, or spots off the tissue):
    every spot would get the same image features and the same prediction."""
    sample = patches[:: max(1, len(patches) // 256)]
    flat = sample.reshape(-1, sample.shape[-1])
    if flat.size and int((flat.max(0).astype(np.int16) - flat.min(0)).max()) <= 2:
        import warnings

        source = entry.get(Key.uns.metadata, {}).get(Key.metadata.source_image_path) or f"of slide {lib!r}"
        warnings.warn(f"image {source} is blank under the spots (one constant colour): every spot gets the same "
                      "image features and the same prediction", UserWarning, stacklevel=3)


class RegionPatches:
    """A slide's spot patches read from its image by region when indexed, never held as one array.

    ``patches[rows]`` (rows: indices, a slice or a tensor) → (k, size, size, 3) uint8 tensor, the same pixels
    as ``extract_patches(adata, size, patch_um)[rows]``. The image is opened lazily in each process (a
    ``DataLoader`` worker reopens it after unpickling): a TIFF / pyramidal TIFF through its memory map or
    zarr store (only the tiles under each crop are read); an in-memory ``images['fullres']`` is carried as is.
    JPEG/PNG files are decoded whole by PIL, once per process: convert them to tiled TIFF for cohorts.

    Parameters
    ----------
    adata
        One slide (``obsm['spatial']`` + an image, see :func:`load_fullres_image`).
    size, patch_um, microns_per_pixel, pad_value
        As :func:`extract_patches`.
    """

    def __init__(self, adata: AnnData, size: int = 224, patch_um: Optional[float] = None,
                 microns_per_pixel: Optional[float] = None, pad_value: int = 255):
        lib, entry = slide_library(adata)
        xy = np.asarray(adata.obsm[Key.obsm.spatial], dtype=np.float64)
        if len(xy) == 0 or not np.isfinite(xy).all():
            raise SlideFormatError(f"slide {lib!r}: obsm['spatial'] is empty or holds non-finite coordinates")
        scale = _fullres_scale(entry)
        self.size, self.pad_value = int(size), int(pad_value)
        self.side = _crop_side(size, patch_um, microns_per_pixel, entry, scale)
        self.centres = np.floor(xy * scale + 0.5).astype(np.int64)
        images = entry.get(Key.uns.images, {})
        self._array = np.asarray(images[Key.image.fullres]) if "fullres" in images else None
        self._source = entry.get(Key.uns.metadata, {}).get(Key.metadata.source_image_path)
        if self._array is None and not self._source:
            load_fullres_image(adata)  # raises the reader's error naming what is missing
            raise SlideFormatError(f"slide {lib!r}: region reads need a full-resolution image file or array")
        self.source = self._source or f"uns['spatial'][{lib!r}]['images']['fullres']"
        self._image = None
        self._pid = None

    def __len__(self) -> int:
        return len(self.centres)

    @property
    def shape(self) -> tuple:
        return (len(self.centres), self.size, self.size, 3)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_image"] = state["_pid"] = None
        return state

    def _open(self):
        if self._image is None or self._pid != os.getpid():
            from .image import ArrayImage, load_image_file

            self._image = ArrayImage(self._array, self.source) if self._array is not None \
                else load_image_file(self._source)
            self._pid = os.getpid()
        return self._image

    def __getitem__(self, rows):
        import torch

        if isinstance(rows, slice):
            rows = np.arange(len(self))[rows]
        rows = np.asarray(rows.cpu().numpy() if hasattr(rows, "cpu") else rows, dtype=np.int64).reshape(-1)
        image, half, side = self._open(), self.side // 2, self.side
        out = np.empty((len(rows), self.size, self.size, 3), dtype=np.uint8)
        for j, i in enumerate(rows):
            x0, y0 = self.centres[i, 0] - half, self.centres[i, 1] - half
            crop = image.crop(int(x0), int(y0), int(x0 + side), int(y0 + side), pad_value=self.pad_value)
            out[j] = crop if side == self.size else _resize(crop, self.size)
        return torch.from_numpy(out)
