"""A prediction → a SpatialData ``.zarr`` store (scverse ``spatialdata``), to open with ``spatialdata-plot``,
``napari-spatialdata`` or any tool of that ecosystem.

The store holds, all in one coordinate system named after the slide id (or ``global``):

* a shapes element, one shape per predicted unit, in full-resolution image pixels (identity transformation):
  circles for spots (radius ``spot_diameter_fullres`` / 2), squares for bins and for a whole-slide
  prediction on a square grid (side: the bin size / grid pitch), polygons for cells when given;
* a table annotating it (``region``, ``region_key='region'``, ``instance_key='instance_id'``): the predicted
  matrix ``X``, ``obs`` (trust columns included), ``var`` (``expected_r``, ``reliable``, ...), ``layers``
  (``lower``/``upper`` intervals), ``obsm`` and the serialisable part of ``uns`` (``uns['stgraph']``: the
  provenance);
* the H&E image (the highest-resolution one the prediction holds) with the scale that lays it under the
  shapes.

The root attributes carry ``stgraph`` (what wrote the store): ``--force`` replaces only a store stgraph wrote.
``spatialdata`` is an optional dependency (``pip install 'stgraph[spatialdata]'``).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from anndata import AnnData

from ..data.image import slide_library
from ..data.slide_id import slide_id_of
from ..errors import StgraphError
from ..keys import Key

__all__ = ["write_spatialdata", "prediction_to_spatialdata", "SPATIALDATA_TABLE", "SpatialDataOutputError"]

#: Name of the prediction's table in the store (``table_name=`` of spatialdata-plot).
SPATIALDATA_TABLE = "table"
#: Name of the H&E image element.
SPATIALDATA_IMAGE = "he"
_REGION_KEY = "region"
_INSTANCE_KEY = "instance_id"
#: Longest image side kept at one pyramid level; larger images get 2× downscaled levels below it.
_PYRAMID_SIDE = 2048


class SpatialDataOutputError(StgraphError, ValueError):
    """A prediction that cannot be written as a SpatialData store."""


def _import_spatialdata():
    try:
        import spatialdata
    except ImportError as err:
        raise ImportError(f"writing a SpatialData store needs the spatialdata package ({err}); install it with "
                          "pip install 'stgraph[spatialdata]'") from err
    return spatialdata


def _element_name(name: str) -> str:
    """A valid SpatialData name (letters, digits, ``_ - .``; not starting with ``__``)."""
    clean = "".join(c if c.isalnum() or c in "_-." else "_" for c in str(name)).lstrip("_") or "global"
    return clean if clean not in (".", "..") else "global"


def _plain(value):
    """``value`` as something anndata writes to zarr (str, numbers, bools, arrays, dicts of them), or ``None``."""
    if isinstance(value, dict):
        out = {str(k): v for k, v in ((k, _plain(v)) for k, v in value.items()) if v is not None}
        return out
    if isinstance(value, (str, bool, int, float, np.bool_, np.integer, np.floating)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.ndarray):
        return value if value.dtype != object else None
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, str) for v in value):
            return np.asarray(value, dtype=object) if value else None
        if all(isinstance(v, (bool, int, float, np.bool_, np.integer, np.floating)) for v in value):
            return np.asarray(value) if value else None
        return None
    return None


def _nn_spacing(xy: np.ndarray) -> Optional[float]:
    if len(xy) < 2:
        return None
    from scipy.spatial import cKDTree

    d, _ = cKDTree(xy).query(xy, k=2)
    spacing = float(np.median(d[:, 1]))
    return spacing if spacing > 0 else None


def _units(pred: AnnData, meta: dict, scalefactors: dict, polygons):
    """(element name, GeoDataFrame) of the prediction's units, in full-resolution pixels, index 0..n-1."""
    import geopandas as gpd
    import shapely

    xy = np.asarray(pred.obsm[Key.obsm.spatial], dtype=np.float64)
    index = pd.RangeIndex(pred.n_obs)
    if polygons is not None:
        geo = polygons.geometry if hasattr(polygons, "geometry") else polygons
        geo = gpd.GeoSeries(geo)
        missing = pred.obs_names[~pred.obs_names.isin(geo.index.astype(str))]
        if len(missing):
            raise SpatialDataOutputError(f"{len(missing)} unit(s) of the prediction have no polygon, e.g. "
                                         f"{missing[:3].tolist()}: polygons are indexed by the prediction's obs names")
        geo.index = geo.index.astype(str)
        return "cells", gpd.GeoDataFrame(geometry=geo.loc[pred.obs_names].to_numpy(), index=index)
    mpp = meta.get(Key.metadata.microns_per_pixel)
    side = None
    if meta.get(Key.metadata.unit_shape) == "square" and meta.get(Key.metadata.bin_size_px):
        side, name = float(meta[Key.metadata.bin_size_px]), "bins"
    elif mpp and (meta.get(Key.metadata.pool_um) or meta.get(Key.metadata.bin_size_um)):
        side, name = float(meta.get(Key.metadata.pool_um) or meta[Key.metadata.bin_size_um]) / float(mpp), "bins"
    elif mpp and meta.get(Key.metadata.grid_lattice) == "square" and meta.get(Key.metadata.grid_pitch_um):
        side, name = float(meta[Key.metadata.grid_pitch_um]) / float(mpp), "grid"
    if side is not None:
        h = side / 2.0
        boxes = shapely.box(xy[:, 0] - h, xy[:, 1] - h, xy[:, 0] + h, xy[:, 1] + h)
        return name, gpd.GeoDataFrame(geometry=boxes, index=index)
    diameter = scalefactors.get(Key.scalefactor.spot_diameter)
    if not diameter:
        spacing = _nn_spacing(xy)  # no stated size: half the spacing keeps neighbours apart
        diameter = 0.5 * spacing if spacing else 1.0
    name = "cells" if meta.get(Key.metadata.unit_shape) == "polygon" else "spots"
    frame = gpd.GeoDataFrame(geometry=gpd.points_from_xy(xy[:, 0], xy[:, 1]), index=index)
    frame["radius"] = np.full(pred.n_obs, float(diameter) / 2.0)
    return name, frame


def _image(entry: dict):
    """(array (y, x, 3), image px per full-resolution px) of the highest-resolution image held, or ``None``."""
    images, scalefactors = entry.get(Key.uns.images, {}) or {}, entry.get(Key.uns.scalefactors, {}) or {}
    for name, key in ((Key.image.fullres, Key.scalefactor.fullres), (Key.image.hires, Key.scalefactor.hires),
                      (Key.image.lowres, Key.scalefactor.lowres)):
        if name in images and (name == Key.image.fullres or scalefactors.get(key)):
            from ..data.image import to_rgb

            return to_rgb(np.asarray(images[name])), float(scalefactors.get(key) or 1.0)
    return None


def prediction_to_spatialdata(pred: AnnData, image: bool = True, polygons=None):
    """A prediction (``predict_slide`` / ``predict_wsi`` output) as an in-memory ``SpatialData`` object (see
    the module docstring); ``polygons``: cell outlines in full-resolution pixels (a GeoSeries / GeoDataFrame
    indexed by the prediction's obs names) to write instead of circles."""
    spatialdata = _import_spatialdata()
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale

    if Key.obsm.spatial not in pred.obsm:
        raise SpatialDataOutputError("the prediction has no obsm['spatial'] (unit centres): nothing to place")
    try:
        lib, entry = slide_library(pred)
    except Exception:  # no uns['spatial']: shapes without an image
        lib, entry = slide_id_of(pred, default="global"), {}
    cs = _element_name(lib)
    meta = dict(entry.get(Key.uns.metadata, {}) or {})
    scalefactors = dict(entry.get(Key.uns.scalefactors, {}) or {})
    shapes_name, geo = _units(pred, meta, scalefactors, polygons)
    shapes = ShapesModel.parse(geo, transformations={cs: Identity()})

    obs = pred.obs.copy()
    obs[_REGION_KEY] = pd.Categorical([shapes_name] * pred.n_obs, categories=[shapes_name])
    obs[_INSTANCE_KEY] = np.arange(pred.n_obs, dtype=np.int64)
    x = pred.X
    table = AnnData(X=x.toarray() if hasattr(x, "toarray") else np.asarray(x), obs=obs, var=pred.var.copy(),
                    layers={k: np.asarray(v.toarray() if hasattr(v, "toarray") else v) for k, v in pred.layers.items()},
                    obsm={k: np.asarray(v) for k, v in pred.obsm.items() if isinstance(v, np.ndarray)})
    uns = {k: _plain(v) for k, v in pred.uns.items() if k != Key.uns.spatial and _element_name(k) == k}
    uns = {k: v for k, v in uns.items() if v is not None}
    uns[Key.uns.spatial] = {lib: {Key.uns.scalefactors: _plain(scalefactors) or {},
                                  Key.uns.metadata: _plain(meta) or {}}}
    table.uns.update(uns)
    table = TableModel.parse(table, region=shapes_name, region_key=_REGION_KEY, instance_key=_INSTANCE_KEY)

    images = {}
    held = _image(entry) if image else None
    if held is not None:
        pixels, scalef = held
        side, factors = max(pixels.shape[:2]), []
        while side > _PYRAMID_SIDE:
            factors.append(2)
            side //= 2
        to_fullres = Identity() if scalef == 1.0 else Scale([1.0 / scalef, 1.0 / scalef], axes=("y", "x"))
        images[SPATIALDATA_IMAGE] = Image2DModel.parse(
            np.ascontiguousarray(pixels.transpose(2, 0, 1)), dims=("c", "y", "x"), c_coords=["r", "g", "b"],
            transformations={cs: to_fullres}, scale_factors=factors or None)
    sdata = spatialdata.SpatialData(images=images, shapes={shapes_name: shapes}, tables={SPATIALDATA_TABLE: table})
    sdata.attrs[Key.uns.stgraph] = {"version": _stgraph_version(), "kind": "prediction", "slide_id": str(lib),
                                    "coordinate_system": cs, "shapes": shapes_name, "table": SPATIALDATA_TABLE,
                                    "image": SPATIALDATA_IMAGE if images else "",
                                    "units": "full-resolution image pixels"}
    return sdata


def write_spatialdata(pred: AnnData, path, force: bool = False, image: bool = True, polygons=None) -> Path:
    """Write a prediction as a SpatialData ``.zarr`` store (see the module docstring).

    The store is written into a temporary folder beside ``path`` and moved into place when complete, so
    ``path`` never holds half a store. An existing ``path`` is refused unless ``force``, and ``force``
    replaces only a store stgraph wrote (its root attributes carry ``stgraph``).

    Parameters
    ----------
    pred
        A prediction (:func:`~stgraph.inference.predict_slide`, :func:`~stgraph.inference.wsi.predict_wsi`).
    path
        The store, a folder ending in ``.zarr``.
    force
        Replace an existing store stgraph wrote.
    image
        Write the H&E image (the highest-resolution one in ``uns['spatial']``); ``False`` leaves it out.
    polygons
        Cell outlines (full-resolution pixels) indexed by ``pred.obs_names``, written instead of circles.

    Returns
    -------
    Path
        ``path``.
    """
    from ..utils.io import (atomic_dir, check_free_space, check_not_in_run_folder, check_replaceable,
                            check_writable_dir)

    path = Path(path)
    if path.suffix != ".zarr":
        raise SpatialDataOutputError(f"a SpatialData store is a folder ending in .zarr, got {path}")
    if (path.exists() or path.is_symlink()) and not force:
        raise FileExistsError(f"{path} already exists (use --force to replace it)")
    if path.exists() or path.is_symlink():
        check_replaceable(path)  # --force replaces a store stgraph wrote, never the user's own
    check_writable_dir(path.parent, what=f"folder of output {path.name}")
    check_not_in_run_folder(path)
    sdata = prediction_to_spatialdata(pred, image=image, polygons=polygons)
    nbytes = sum(np.asarray(t.X).nbytes for t in sdata.tables.values())
    nbytes += sum(int(np.prod(_level0(im).shape)) for im in sdata.images.values())
    check_free_space(path, nbytes, what="SpatialData store")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zarr's note on sharding defaults
        with atomic_dir(path, overwrite=force) as tmp:
            sdata.write(tmp)
    return path


def _stgraph_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stgraph")
    except PackageNotFoundError:
        return "unknown"


def _level0(image):
    from xarray import DataTree

    if isinstance(image, DataTree):
        from spatialdata import get_pyramid_levels

        return get_pyramid_levels(image, n=0)
    return image
