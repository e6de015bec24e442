"""Spot grids laid over the tissue of a whole-slide image, for predicting expression where nothing was sequenced.

Three layouts, in µm so they follow the slide's pixel size:

* ``"visium"`` — the 10x Visium hexagonal lattice: spots 55 µm across, 100 µm centre to centre; row r sits
  at y = y₀ + r · 100 · √3/2 µm and every other row is shifted by half a pitch. Array coordinates follow
  Space Ranger: along a row ``array_col`` steps by 2 (x = x₀ + array_col · 50 µm), and it is even on even
  rows and odd on odd rows, so the six neighbours of a spot are at (row, col ± 2) and (row ± 1, col ± 1).
* ``"st"`` — the legacy Spatial Transcriptomics square lattice: spots 100 µm across, 200 µm apart.
* a number — a square lattice of that pitch in µm (spot diameter 0.55 · pitch unless given).

Spots whose centre falls on the tissue mask are kept. :func:`grid_to_anndata` turns the grid into the stgraph
slide convention (``docs/architecture.md``) with no genes, ready for prediction and for
``scanpy.pl.spatial``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import pandas as pd
import scipy.sparse as sp
from ...errors import StgraphError
from ...keys import Key
from anndata import AnnData

__all__ = ["GRID_KINDS", "SpotGrid", "spot_grid", "grid_to_anndata", "wsi_spot_grid", "GridTooLargeError",
           "DEFAULT_MAX_SPOTS"]

#: Default bound on one grid's spots (``predict --max-spots``): 2e5 Visium spots cover 17 cm² of tissue,
#: far more than a slide holds; a larger grid is almost always a wrong ``--grid`` pitch or ``--mpp``.
DEFAULT_MAX_SPOTS = 200_000

#: (lattice, pitch µm, spot diameter µm) of the named layouts.
GRID_KINDS = {"visium": ("hex", 100.0, 55.0), "st": ("square", 200.0, 100.0)}


class GridTooLargeError(StgraphError, ValueError):
    """A spot grid would exceed its bound (``max_spots``); ``estimate`` holds the spots it would have."""

    def __init__(self, message: str, estimate: int = 0):
        super().__init__(message)
        self.estimate = int(estimate)


@dataclass
class SpotGrid:
    """Spot centres on a slide.

    Attributes
    ----------
    xy
        (n, 2) float64 centres x, y in level-0 pixels.
    array_row, array_col
        (n,) int64 lattice coordinates (Visium convention on the hex lattice, see module doc), counted from
        the top-left of the tissue's bounding box.
    kind
        ``"visium"``, ``"st"`` or ``"square"`` (a user pitch).
    lattice
        ``"hex"`` or ``"square"``.
    pitch_um
        Centre-to-centre distance of neighbouring spots, µm.
    spot_diameter_um
        Spot diameter, µm.
    mpp
        µm per level-0 pixel.
    image_size
        (width, height) of level 0, pixels.
    """

    xy: np.ndarray
    array_row: np.ndarray
    array_col: np.ndarray
    kind: str
    lattice: str
    pitch_um: float
    spot_diameter_um: float
    mpp: float
    image_size: tuple[int, int]

    @property
    def n_spots(self) -> int:
        return int(len(self.xy))

    @property
    def pitch_px(self) -> float:
        """Pitch in level-0 pixels: pitch_um / mpp."""
        return self.pitch_um / self.mpp

    @property
    def spot_diameter_px(self) -> float:
        """Spot diameter in level-0 pixels: spot_diameter_um / mpp (``spot_diameter_fullres``)."""
        return self.spot_diameter_um / self.mpp


def _layout(kind: Union[str, float], spot_diameter_um: Optional[float]) -> tuple[str, str, float, float]:
    if isinstance(kind, str):
        if kind not in GRID_KINDS:
            raise ValueError(f"grid kind must be one of {sorted(GRID_KINDS)} or a pitch in µm, got {kind!r}")
        lattice, pitch, diameter = GRID_KINDS[kind]
        name = kind
    else:
        pitch = float(kind)
        if not (np.isfinite(pitch) and pitch > 0):
            raise ValueError(f"grid pitch must be a positive number of µm, got {kind!r}")
        lattice, diameter, name = "square", 0.55 * pitch, "square"
    if spot_diameter_um is not None:
        diameter = float(spot_diameter_um)
    return name, lattice, float(pitch), float(diameter)


def spot_grid(mask: np.ndarray, mask_scale: Union[float, tuple[float, float]], mpp: float,
              kind: Union[str, float] = "visium", spot_diameter_um: Optional[float] = None,
              image_size: Optional[tuple[int, int]] = None, max_spots: Optional[int] = None) -> SpotGrid:
    """Lay a spot lattice over the tissue and keep the spots whose centre is on tissue.

    Parameters
    ----------
    mask
        (h, w) bool tissue mask, e.g. :func:`stgraph.data.wsi.tissue.tissue_mask` of a thumbnail.
    mask_scale
        Mask pixels per level-0 pixel (thumbnail width / level-0 width), or (x scale, y scale). A level-0
        point (x, y) falls in mask pixel (⌊x · sx⌋, ⌊y · sy⌋).
    mpp
        µm per level-0 pixel.
    kind
        ``"visium"`` (hex, 100 µm pitch, 55 µm spots), ``"st"`` (square, 200 µm, 100 µm) or a pitch in µm
        (square lattice, spots 0.55 · pitch unless ``spot_diameter_um`` is given).
    spot_diameter_um
        Overrides the layout's spot diameter, µm.
    image_size
        (width, height) of level 0, px; default mask size / scale.
    max_spots
        Bound on the spots (``None``: none). Checked before any lattice is allocated, on the estimate
        tissue area / area per spot (pitch² on the square lattice, pitch² · √3/2 on the hex one) and on the
        lattice over the tissue's bounding box (at most 20 × ``max_spots`` positions); beyond it
        :class:`GridTooLargeError` gives the estimate.

    Returns
    -------
    SpotGrid
        Spots in row-major order (by array_row, then array_col). The lattice starts half a pitch inside
        the top-left corner of the tissue's bounding box; the pitch in level-0 pixels is pitch_um / mpp and,
        on the hex lattice, rows are pitch · √3/2 apart.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (h, w), got shape {mask.shape}")
    if not (mpp > 0):
        raise ValueError(f"mpp must be positive (µm per level-0 pixel), got {mpp}")
    sx, sy = (mask_scale, mask_scale) if np.isscalar(mask_scale) else mask_scale
    sx, sy = float(sx), float(sy)
    if not (sx > 0 and sy > 0):
        raise ValueError(f"mask_scale must be positive, got {mask_scale}")
    if image_size is None:
        image_size = (int(round(mask.shape[1] / sx)), int(round(mask.shape[0] / sy)))
    name, lattice, pitch_um, diameter_um = _layout(kind, spot_diameter_um)
    pitch = pitch_um / mpp
    empty = np.zeros(0, dtype=np.int64)
    if not mask.any():
        return SpotGrid(np.zeros((0, 2)), empty, empty, name, lattice, pitch_um, diameter_um, float(mpp),
                        tuple(image_size))

    rows_any, cols_any = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    # Tissue bounding box in level-0 pixels (mask pixel edges).
    x_min, x_max = cols_any[0] / sx, (cols_any[-1] + 1) / sx
    y_min, y_max = rows_any[0] / sy, (rows_any[-1] + 1) / sy
    x0, y0 = x_min + pitch / 2.0, y_min + pitch / 2.0
    row_step = pitch * math.sqrt(3.0) / 2.0 if lattice == "hex" else pitch
    col_step = pitch / 2.0 if lattice == "hex" else pitch  # x per unit of array_col
    n_rows = max(int(math.floor((y_max - y0) / row_step)) + 1, 1)
    n_cols = max(int(math.floor((x_max - x0) / col_step)) + 1, 1)
    if max_spots is not None:
        _check_grid_size(mask, sx, sy, float(mpp), lattice, pitch_um, n_rows * n_cols, int(max_spots))
    rows, cols = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    if lattice == "hex":
        keep = (rows % 2) == (cols % 2)  # Visium: even columns on even rows, odd on odd rows
        rows, cols = rows[keep], cols[keep]
    rows, cols = rows.ravel().astype(np.int64), cols.ravel().astype(np.int64)
    x = x0 + cols * col_step
    y = y0 + rows * row_step
    mx, my = np.floor(x * sx).astype(np.int64), np.floor(y * sy).astype(np.int64)
    inside = (mx >= 0) & (mx < mask.shape[1]) & (my >= 0) & (my < mask.shape[0])
    on_tissue = np.zeros(len(x), dtype=bool)
    on_tissue[inside] = mask[my[inside], mx[inside]]
    xy = np.column_stack([x[on_tissue], y[on_tissue]]).astype(np.float64)
    return SpotGrid(xy, rows[on_tissue], cols[on_tissue], name, lattice, pitch_um, diameter_um, float(mpp),
                    (int(image_size[0]), int(image_size[1])))


def _check_grid_size(mask: np.ndarray, sx: float, sy: float, mpp: float, lattice: str, pitch_um: float,
                     n_lattice: int, max_spots: int) -> None:
    """Refuse a grid beyond ``max_spots`` from the tissue area, before anything of its size is allocated."""
    tissue_um2 = float(mask.sum()) / (sx * sy) * mpp * mpp
    per_spot_um2 = pitch_um * pitch_um * (math.sqrt(3.0) / 2.0 if lattice == "hex" else 1.0)
    estimate = int(round(tissue_um2 / per_spot_um2))
    if estimate > max_spots or n_lattice > 20 * max_spots:
        raise GridTooLargeError(
            f"a {pitch_um:g} µm grid over {tissue_um2 / 1e8:.3g} cm² of tissue (at {mpp:g} µm/px) would lay about "
            f"{max(estimate, 1):,} spots (> {max_spots:,}); check --grid and --mpp, or raise --max-spots", estimate)


def _fit(image: np.ndarray, max_side: int) -> np.ndarray:
    """``image`` shrunk (PIL, bilinear with antialiasing) so its longest side is ≤ ``max_side``."""
    from PIL import Image

    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return np.ascontiguousarray(image[..., :3], dtype=np.uint8)
    f = max_side / max(h, w)
    size = (max(1, int(round(w * f))), max(1, int(round(h * f))))
    pil = Image.fromarray(np.asarray(image[..., :3], dtype=np.uint8))
    return np.asarray(pil.resize(size, Image.Resampling.BILINEAR))


def grid_to_anndata(grid: SpotGrid, slide_id: str, thumbnail: Optional[np.ndarray] = None,
                    source_image: Optional[str | os.PathLike] = None, hires_max_side: int = 2000,
                    lowres_max_side: int = 600) -> AnnData:
    """The stgraph slide AnnData of a grid: spots, no genes.

    Parameters
    ----------
    grid
        From :func:`spot_grid`.
    slide_id
        Library id (``obs['slide_id']`` and the key of ``uns['spatial']``).
    thumbnail
        (h, w, 3) uint8 RGB of the whole slide (any size; it is shrunk to ``hires_max_side`` and
        ``lowres_max_side``). Its scale factors are image width / level-0 width.
    source_image
        The whole-slide image path, stored as ``metadata['source_image']`` (and as ``source_image_path``
        for ``.tif``/``.tiff``, which :func:`stgraph.data.image.load_fullres_image` opens directly).

    Returns
    -------
    AnnData
        ``X``: (n, 0) CSR float32; ``obs``: ``in_tissue`` = 1, ``array_row``, ``array_col`` (int64),
        ``slide_id`` (categorical), names ``"{array_row}x{array_col}"``; ``obsm['spatial']``: (n, 2) float64
        x, y level-0 pixels; ``uns['spatial'][slide_id]``: ``images`` {``hires``, ``lowres``} (when a
        thumbnail is given), ``scalefactors`` {``tissue_hires_scalef``, ``tissue_lowres_scalef``,
        ``spot_diameter_fullres`` (level-0 px)}, ``metadata`` {``microns_per_pixel``, ``source_image``,
        ``grid_kind``, ``grid_lattice``, ``grid_pitch_um``, ``spot_diameter_um``, ``fullres_shape``}.
    """
    slide_id = str(slide_id)
    names = pd.Index([f"{r}x{c}" for r, c in zip(grid.array_row, grid.array_col)], dtype=str)
    obs = pd.DataFrame(index=names)
    obs["in_tissue"] = np.ones(grid.n_spots, dtype=np.int64)
    obs["array_row"] = np.asarray(grid.array_row, dtype=np.int64)
    obs["array_col"] = np.asarray(grid.array_col, dtype=np.int64)
    obs["slide_id"] = pd.Categorical([slide_id] * grid.n_spots, categories=[slide_id])
    adata = AnnData(X=sp.csr_matrix((grid.n_spots, 0), dtype=np.float32), obs=obs)
    adata.obsm[Key.obsm.spatial] = np.asarray(grid.xy, dtype=np.float64).reshape(-1, 2)

    width, height = grid.image_size
    images: dict = {}
    scalefactors = {"spot_diameter_fullres": float(grid.spot_diameter_px)}
    if thumbnail is not None:
        for name, side in (("hires", hires_max_side), ("lowres", lowres_max_side)):
            img = _fit(np.asarray(thumbnail), side)
            images[name] = img
            scalefactors[f"tissue_{name}_scalef"] = img.shape[1] / float(width)
    metadata = {"microns_per_pixel": float(grid.mpp), "grid_kind": grid.kind, "grid_lattice": grid.lattice,
                "grid_pitch_um": float(grid.pitch_um), "spot_diameter_um": float(grid.spot_diameter_um),
                "fullres_shape": [int(height), int(width)]}
    if source_image is not None:
        source = str(Path(source_image).resolve())
        metadata["source_image"] = source
        if Path(source).suffix.lower() in (".tif", ".tiff"):
            metadata["source_image_path"] = source
    adata.uns[Key.uns.spatial] = {slide_id: {
        Key.uns.images: images, Key.uns.scalefactors: scalefactors, Key.uns.metadata: metadata}}
    return adata


def wsi_spot_grid(slide, kind: Union[str, float] = "visium", mpp: Optional[float] = None,
                  slide_id: Optional[str] = None, thumbnail_max_side: int = 2000,
                  spot_diameter_um: Optional[float] = None, max_spots: Optional[int] = None,
                  **mask_kwargs) -> AnnData:
    """Whole-slide image → tissue mask → spot grid → AnnData, in one call.

    Parameters
    ----------
    slide
        A path or an open :class:`~stgraph.data.wsi.WSIImage`.
    kind, spot_diameter_um
        See :func:`spot_grid`.
    mpp
        µm per level-0 pixel, when the file does not say (``--mpp``).
    slide_id
        Default: the file name without its suffix.
    thumbnail_max_side
        Longest side of the thumbnail the tissue is detected on (and stored as ``hires``), px.
    max_spots
        Bound on the spots (see :func:`spot_grid`).
    **mask_kwargs
        Passed to :func:`stgraph.data.wsi.tissue.tissue_mask` (``min_area_um2``, ``min_saturation``, …).
    """
    from .tissue import tissue_mask
    from .image import WSIImage

    own = not isinstance(slide, WSIImage)
    wsi = WSIImage(slide, mpp=mpp) if own else slide
    try:
        thumb = wsi.thumbnail(thumbnail_max_side)
        h0, w0 = wsi.shape[:2]
        scale = (thumb.shape[1] / w0, thumb.shape[0] / h0)
        mask_kwargs.setdefault("source", wsi.source)
        mask = tissue_mask(thumb, mpp=wsi.mpp / scale[0], **mask_kwargs)
        grid = spot_grid(mask, scale, wsi.mpp, kind=kind, spot_diameter_um=spot_diameter_um, image_size=(w0, h0),
                         max_spots=max_spots)
        name = slide_id if slide_id is not None else Path(wsi.source).name.split(".")[0]
        return grid_to_anndata(grid, name, thumbnail=thumb, source_image=wsi.source,
                               hires_max_side=min(thumbnail_max_side, 2000))
    finally:
        if own:
            wsi.close()
