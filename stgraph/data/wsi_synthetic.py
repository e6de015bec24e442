"""Synthetic whole-slide images for tests, examples and benchmarks (pyramidal TIFFs written with tifffile).

Two writers:

* :func:`write_pyramidal_tiff` — an in-memory level-0 array → a tiled pyramid whose level k is the 2ᵏ × 2ᵏ
  block mean of level 0, with the pixel size stored in one of the metadata flavours that
  :class:`~stgraph.data.wsi.WSIImage` reads (TIFF resolution tags, Aperio SVS description, OME-XML).
* :func:`write_synthetic_wsi` — a large slide (e.g. 40 000 × 40 000 px) streamed tile by tile, level by level,
  so peak memory is a few tiles: "tissue" is a union of discs filled with a pink H&E-like texture on
  white glass.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

__all__ = ["block_mean", "write_pyramidal_tiff", "write_synthetic_wsi", "pink_texture", "DEFAULT_BLOBS"]

#: Discs (centre x, centre y, radius) as fractions of the slide width: a few large tissue pieces.
DEFAULT_BLOBS: tuple[tuple[float, float, float], ...] = (
    (0.30, 0.32, 0.22), (0.46, 0.46, 0.16), (0.70, 0.66, 0.20), (0.26, 0.74, 0.12), (0.76, 0.24, 0.10),
)


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """(H, W, C) uint8 → (H // factor, W // factor, C) uint8: the mean of each factor × factor block, rounded."""
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    blocks = image[:h, :w].reshape(h // factor, factor, w // factor, factor, -1).astype(np.float32)
    return np.rint(blocks.mean(axis=(1, 3))).astype(np.uint8)


def _metadata_kwargs(flavour: str, mpp: Optional[float], resolution_unit: str, shape) -> dict:
    if flavour == "none" or mpp is None:
        return {"metadata": None}
    if flavour == "resolution":
        per_unit = {"CENTIMETER": 1e4, "INCH": 25400.0}[resolution_unit] / mpp
        return {"resolution": (per_unit, per_unit), "resolutionunit": resolution_unit, "metadata": None}
    if flavour == "svs":
        h, w = shape[:2]
        desc = (f"Aperio Image Library v12.0.16 \r\n{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q=70"
                f"|AppMag = 20|StripeWidth = 2040|MPP = {mpp:.4f}|Filename = synthetic")
        return {"description": desc, "metadata": None}
    if flavour == "ome":
        return {"metadata": {"axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeXUnit": "µm",
                             "PhysicalSizeY": mpp, "PhysicalSizeYUnit": "µm"}}
    raise ValueError(f"flavour must be 'resolution', 'svs', 'ome' or 'none', got {flavour!r}")


def write_pyramidal_tiff(path: str | os.PathLike, image: np.ndarray, levels: int = 3, mpp: Optional[float] = 0.5,
                         flavour: str = "resolution", resolution_unit: str = "CENTIMETER", tile: int = 64,
                         compression: Optional[str] = "zlib") -> Path:
    """Write ``image`` (H, W, 3) uint8 as a tiled pyramidal TIFF.

    Level k (0 ≤ k < ``levels``) is :func:`block_mean` (image, 2ᵏ). Generic and OME flavours store the
    reduced levels as SubIFDs of level 0; the SVS flavour as successive pages (as Aperio does), each with an
    Aperio description, and a stripped thumbnail page after level 0.

    ``flavour``: ``"resolution"`` (XResolution/YResolution in ``resolution_unit`` ``"CENTIMETER"`` or
    ``"INCH"``), ``"svs"`` (``MPP = …`` in the description), ``"ome"`` (OME-XML PhysicalSizeX in µm) or
    ``"none"`` (no pixel size at all).
    """
    import tifffile

    path = Path(path)
    pyramid = [image] + [block_mean(image, 2**k) for k in range(1, levels)]
    common = {"tile": (tile, tile), "photometric": "rgb", "compression": compression}
    meta = _metadata_kwargs(flavour, mpp, resolution_unit, image.shape)
    with tifffile.TiffWriter(path, bigtiff=False, ome=(flavour == "ome")) as tif:
        if flavour == "svs":
            # Aperio layout: level 0, a stripped thumbnail page, then the reduced levels (tiled).
            tif.write(pyramid[0], **common, **meta)
            tif.write(block_mean(image, 2**levels), photometric="rgb", **meta)
            for level in pyramid[1:]:
                tif.write(level, **common, **meta)
        else:
            tif.write(pyramid[0], subifds=levels - 1, **common, **meta)
            for level in pyramid[1:]:
                tif.write(level, subfiletype=1, **common)
    return path


def pink_texture(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) uint8 H&E-like texture: pink eosin background with purple "nuclei" speckles."""
    h, w = shape
    base = np.empty((h, w, 3), dtype=np.float32)
    base[...] = (226, 160, 196)
    base += rng.normal(0, 10, (h, w, 1)).astype(np.float32)
    nuclei = rng.random((h, w)) < 0.04
    base[nuclei] = (120, 70, 150)
    return np.clip(base, 0, 255).astype(np.uint8)


def write_synthetic_wsi(path: str | os.PathLike, size: int = 40_000, mpp: float = 0.5, levels: Optional[int] = None,
                        tile: int = 512, blobs: Sequence[tuple[float, float, float]] = DEFAULT_BLOBS,
                        compression: str = "zlib", compression_level: Optional[int] = None,
                        seed: int = 0) -> Path:
    """Stream a ``size`` × ``size`` px pyramidal TIFF of pink tissue discs on white glass, tile by tile.

    Parameters
    ----------
    size
        Level-0 width = height, px.
    mpp
        µm per level-0 pixel, stored as XResolution in pixels per centimetre (1e4 / mpp).
    levels
        Pyramid levels (downsample 2ᵏ); default: until the smallest side is ≤ 1024 px.
    tile
        Tile side, px.
    blobs
        Discs (cx, cy, r) as fractions of ``size``; a pixel is tissue when it lies in any disc.
    compression, compression_level
        tifffile codec name and its level (e.g. ``"zlib"``, 1: fastest; ``None``: the codec's default).

    Notes
    -----
    Each level is generated directly at its resolution (not by reducing level 0), so writing never holds
    more than one tile plus a few precomputed texture tiles: tiles wholly outside every disc are white,
    tiles wholly inside one are a texture tile, and only tiles crossed by a disc edge are computed per
    pixel. The texture is not a block mean of level 0; only the tissue geometry agrees across levels.
    """
    import tifffile

    path = Path(path)
    rng = np.random.default_rng(seed)
    if levels is None:
        levels = 1
        while size // 2 ** (levels - 1) > 1024:  # down to a smallest level of ≤ 1024 px
            levels += 1
    textures = [pink_texture((tile, tile), rng) for _ in range(8)]
    white = np.full((tile, tile, 3), 255, dtype=np.uint8)
    discs = np.asarray(blobs, dtype=np.float64)

    def tiles(level: int) -> Iterator[np.ndarray]:
        n = size // 2**level
        scale = n  # blob fractions → level pixels
        cx, cy, r = discs[:, 0] * scale, discs[:, 1] * scale, discs[:, 2] * scale
        t = 0
        for y0 in range(0, n, tile):
            for x0 in range(0, n, tile):
                t += 1
                # Distance from each disc centre to the nearest and farthest point of the tile.
                nx = np.clip(cx, x0, x0 + tile) - cx
                ny = np.clip(cy, y0, y0 + tile) - cy
                near = np.hypot(nx, ny)
                fx = np.maximum(np.abs(cx - x0), np.abs(cx - x0 - tile))
                fy = np.maximum(np.abs(cy - y0), np.abs(cy - y0 - tile))
                far = np.hypot(fx, fy)
                texture = textures[(x0 // tile * 7 + y0 // tile * 3 + level) % len(textures)]
                if (far <= r).any():
                    yield texture
                elif (near > r).all():
                    yield white
                else:
                    yy, xx = np.mgrid[y0 : y0 + tile, x0 : x0 + tile] + 0.5
                    inside = np.zeros((tile, tile), dtype=bool)
                    for k in np.flatnonzero(near <= r):
                        inside |= (xx - cx[k]) ** 2 + (yy - cy[k]) ** 2 <= r[k] ** 2
                    yield np.where(inside[..., None], texture, white)

    per_cm = 1e4 / mpp
    common = {"tile": (tile, tile), "photometric": "rgb", "compression": compression, "dtype": np.uint8}
    if compression_level is not None:
        common["compressionargs"] = {"level": compression_level}
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(tiles(0), shape=(size, size, 3), subifds=levels - 1, resolution=(per_cm, per_cm),
                  resolutionunit="CENTIMETER", metadata=None, **common)
        for level in range(1, levels):
            n = size // 2**level
            tif.write(tiles(level), shape=(n, n, 3), subfiletype=1, **common)
    return path
