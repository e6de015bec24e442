"""AnnData files (``.h5ad``): in the stgraph convention, or any other one described by explicit options.

The convention (:func:`~stgraph.data.readers.base.validate_slide`): spot or cell centres in
``obsm['spatial']`` as (x, y) full-resolution pixels of the H&E, the image and its scale in
``uns['spatial'][slide_id]``. A file from elsewhere (a Xenium-derived table with ``obs['x_centroid']`` in µm
and a separate JPEG, say) is read with options that say where its coordinates are and which image they refer
to, with no converter to write: ``read_slide("cells.h5ad", x="x_centroid", y="y_centroid",
coordinates="um", image="he.jpg", mpp=0.2125)``, or ``--read x=x_centroid --read y=y_centroid ...`` on the
command line.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

import numpy as np
from anndata import AnnData

from ..errors import SlideFormatError, require_file
from ...keys import Key
from .base import _attach_image, _finish_obs, register_reader, validate_slide

__all__ = ["read_h5ad", "H5AD_OPTIONS"]

#: The options of :func:`read_h5ad` and what each says (listed by the error for a file without coordinates).
H5AD_OPTIONS = {
    "spatial_key": "obsm key of the (n, 2) centres (default 'spatial')",
    "x": "obs column of the x (column) coordinate, with y=",
    "y": "obs column of the y (row) coordinate, with x=",
    "axis_order": "'xy' (default) or 'yx' when the coordinates are (row, column)",
    "coordinates": "'pixels' (full-resolution pixels of the image, default) or 'um' (micrometres; needs mpp=)",
    "image": "the H&E image file the coordinates refer to (TIFF, JPEG, PNG, ...)",
    "mpp": "micrometres per pixel of that image",
    "spot_diameter_um": "the diameter of a spot or cell in µm (default: the file's own, if any)",
    "slide_id": "the slide id (default: the file's own, else the file name)",
}

#: Column names that look like coordinates, offered by the error for a file without ``obsm['spatial']``.
_COORDINATE_NAMES = re.compile(r"^(x|y|.*[_ ]x|.*[_ ]y|x[_ ].*|y[_ ].*|.*(pxl|pixel|centroid|imagecol|imagerow|"
                               r"array_col|array_row|coord).*)$", re.IGNORECASE)


@register_reader("h5ad", detect=lambda path, kwargs: path.is_file() and path.suffix == ".h5ad")
def read_h5ad(path: str | os.PathLike, spatial_key: Optional[str] = None, x: Optional[str] = None,
              y: Optional[str] = None, axis_order: str = "xy", coordinates: str = "pixels",
              image: Optional[str | os.PathLike] = None, mpp: Optional[float] = None,
              spot_diameter_um: Optional[float] = None, slide_id: Optional[str] = None) -> AnnData:
    """Read an ``.h5ad`` slide and check the stgraph convention (see :func:`validate_slide`).

    Parameters
    ----------
    path
        The ``.h5ad`` file.
    spatial_key
        ``obsm`` key holding the (n, 2) centres, when not ``'spatial'``.
    x, y
        ``obs`` columns holding the centres (instead of an ``obsm`` key).
    axis_order
        ``'xy'`` (column, row: the convention) or ``'yx'`` (row, column, e.g. ``imagerow, imagecol``).
    coordinates
        ``'pixels'``: full-resolution pixels of the H&E; ``'um'``: micrometres, divided by ``mpp``.
    image
        The H&E the coordinates refer to; replaces any image in ``uns['spatial']`` (every centre must lie on
        it).
    mpp
        µm per pixel of that image (needed with ``coordinates='um'``; otherwise recorded as the slide's pixel
        size).
    spot_diameter_um
        Spot (or cell) diameter in µm, recorded as ``spot_diameter_fullres`` pixels (needs ``mpp``).
    slide_id
        The slide id, replacing the file's own.

    Returns
    -------
    AnnData
        The slide in the stgraph convention.

    Raises
    ------
    SlideFormatError
        Naming the file and the problem: an option naming a column or key that is not there, ``'um'``
        without ``mpp``, centres off the image, or (no options) a file without ``obsm['spatial']``, with the
        columns that look like coordinates and the options that would read them.
    """
    import anndata

    path = require_file(path, "AnnData file (.h5ad)")
    if axis_order not in ("xy", "yx"):
        raise SlideFormatError(f"{path}: axis_order must be 'xy' or 'yx', got {axis_order!r}")
    if coordinates not in ("pixels", "um"):
        raise SlideFormatError(f"{path}: coordinates must be 'pixels' or 'um', got {coordinates!r}")
    mpp = _positive(mpp, "mpp", path)
    spot_diameter_um = _positive(spot_diameter_um, "spot_diameter_um", path)
    if (x is None) != (y is None):
        raise SlideFormatError(f"{path}: give both x= and y= (obs columns of the centres)")
    if x is not None and spatial_key is not None:
        raise SlideFormatError(f"{path}: give the centres either as x=/y= obs columns or as spatial_key=, not both")
    if x is not None and axis_order != "xy":
        raise SlideFormatError(f"{path}: x= and y= already name the axes; axis_order goes with spatial_key=")
    try:
        adata = anndata.read_h5ad(path)
    except (OSError, KeyError, ValueError) as err:
        raise SlideFormatError(f"cannot read {path} as an .h5ad file: {err}") from err
    explicit = any(v is not None for v in (spatial_key, x, image, mpp, spot_diameter_um, slide_id)) or (
        axis_order != "xy" or coordinates != "pixels")
    if not explicit:
        if Key.obsm.spatial not in adata.obsm:
            raise SlideFormatError(_no_coordinates_message(path, adata))
        return validate_slide(adata, source=str(path))
    own = _own_slide_id(adata)
    old = dict(adata.uns.get(Key.uns.spatial, {}).get(own, {})) if own else {}  # before the id may change
    if mpp is None:  # the file's own pixel size, if it states one
        mpp = old.get(Key.uns.metadata, {}).get(Key.metadata.microns_per_pixel)
    if coordinates == "um" and mpp is None:
        raise SlideFormatError(f"{path}: coordinates='um' needs mpp= (µm per pixel of the image) to place the "
                               "centres on it")
    if spot_diameter_um is not None and mpp is None:
        raise SlideFormatError(f"{path}: spot_diameter_um needs mpp= to be converted to pixels")
    xy = _centres(adata, path, spatial_key, x, y)
    if axis_order == "yx":
        xy = xy[:, ::-1]
    if coordinates == "um":
        xy = xy / mpp
    adata.obsm[Key.obsm.spatial] = np.ascontiguousarray(xy, dtype=np.float64)
    slide_id = str(slide_id) if slide_id is not None else (own or Path(path).name.removesuffix(".h5ad"))
    _finish_obs(adata, slide_id)
    diameter = (spot_diameter_um / mpp if spot_diameter_um is not None
                else old.get(Key.uns.scalefactors, {}).get(Key.scalefactor.spot_diameter))
    if image is not None:
        _attach_image(adata, slide_id, Path(image), diameter, 2000, mpp, what=f"{path}")
    else:
        entry = {Key.uns.images: dict(old.get(Key.uns.images, {})),
                 Key.uns.scalefactors: dict(old.get(Key.uns.scalefactors, {})),
                 Key.uns.metadata: dict(old.get(Key.uns.metadata, {}))}
        if diameter is not None:
            entry[Key.uns.scalefactors][Key.scalefactor.spot_diameter] = float(diameter)
        if mpp is not None:
            entry[Key.uns.metadata][Key.metadata.microns_per_pixel] = float(mpp)
        adata.uns[Key.uns.spatial] = {slide_id: entry}
    return validate_slide(adata, source=str(path))


def _positive(value, name: str, path: Path) -> Optional[float]:
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise SlideFormatError(f"{path}: {name} must be a number, got {value!r}") from None
    if not (np.isfinite(value) and value > 0):
        raise SlideFormatError(f"{path}: {name} must be a positive number, got {value}")
    return value


def _centres(adata: AnnData, path: Path, spatial_key: Optional[str], x: Optional[str], y: Optional[str]):
    if x is not None:
        missing = [c for c in (x, y) if c not in adata.obs]
        if missing:
            raise SlideFormatError(f"{path}: no obs column {missing[0]!r} (x={x!r}, y={y!r}); its obs columns: "
                                   f"{list(adata.obs.columns)[:30]}")
        import pandas as pd

        xy = np.stack([pd.to_numeric(adata.obs[c], errors="coerce").to_numpy(np.float64) for c in (x, y)], 1)
        what = f"obs[{x!r}], obs[{y!r}]"
    else:
        key = spatial_key or Key.obsm.spatial
        if key not in adata.obsm:
            raise SlideFormatError(f"{path}: no obsm[{key!r}]; its obsm keys: {list(adata.obsm)}")
        xy = np.asarray(adata.obsm[key], dtype=np.float64)
        what = f"obsm[{key!r}]"
        if xy.ndim != 2 or xy.shape[1] != 2:
            raise SlideFormatError(f"{path}: {what} must be (n, 2); got shape {xy.shape}")
    if not np.isfinite(xy).all():
        raise SlideFormatError(f"{path}: {what} holds missing or non-numeric coordinates")
    return xy


def _own_slide_id(adata: AnnData) -> Optional[str]:
    if Key.obs.slide_id in adata.obs:
        ids = adata.obs[Key.obs.slide_id].astype(str).unique()
        return str(ids[0]) if len(ids) == 1 else None
    libs = list(adata.uns.get(Key.uns.spatial, {}))
    return str(libs[0]) if len(libs) == 1 else None


def _xy_pair(columns: list[str]) -> Optional[tuple[str, str]]:
    """Two columns that name the x and y of one thing (``x_centroid``/``y_centroid``, ``pxl_col_in_fullres``/
    ``pxl_row_in_fullres``, ``imagecol``/``imagerow``); grid indices (``array_col``/``array_row``) are not
    pixel positions and are never offered."""
    present = set(columns)
    for c in columns:
        y = re.sub(r"(^|[_ ])x($|[_ ])", r"\1y\2", c, count=1)
        if y != c and y in present:
            return c, y
    for c in columns:
        if "col" in c.lower() and not c.lower().startswith("array"):
            row = c.replace("col", "row").replace("Col", "Row").replace("COL", "ROW")
            if row in present:
                return c, row
    return None


def _no_coordinates_message(path: Path, adata: AnnData) -> str:
    columns = [c for c in adata.obs.columns if _COORDINATE_NAMES.match(str(c))]
    keys = [k for k in adata.obsm if np.ndim(adata.obsm[k]) == 2 and np.shape(adata.obsm[k])[1] == 2
            and re.search(r"spatial|coord|centroid|pixel|pxl|xy|_rc$|loc", str(k), re.IGNORECASE)]
    found = []
    if columns:
        found.append(f"obs columns that look like coordinates: {columns[:8]}")
    if keys:
        found.append(f"two-column obsm keys: {keys}")
    pair = _xy_pair([str(c) for c in adata.obs.columns])
    if pair:
        how = f"x={pair[0]!r}, y={pair[1]!r}"
    elif keys:
        how = f"spatial_key={keys[0]!r}"
    else:
        how = "x='X_COLUMN', y='Y_COLUMN'"
    return (f"{path} has no obsm['spatial'] (centres in the H&E's full-resolution pixels)"
            + (f"; it has {' and '.join(found)}" if found else "")
            + f". Read it with read_slide({str(path)!r}, {how}, image='HE.tif', mpp=0.5) (add coordinates='um' "
            "for micrometres, axis_order='yx' for row, column), or on the command line with --read KEY=VALUE "
            "for each (--read " + how.replace(", ", " --read ").replace("'", "") + " --read image=HE.tif "
            "--read mpp=0.5); docs/spatialdata.md, 'Your own AnnData and images'. Options: "
            + "; ".join(f"{k}: {v}" for k, v in H5AD_OPTIONS.items()))
