"""SpatialData ``.zarr`` stores (scverse ``spatialdata``; e.g. written by ``spatialdata-io``) → AnnData in the
stgraph convention.

A store holds *elements*: images, shapes (circles or polygons), labels, points, and tables. One slide is
read from three of them:

* the **table** (an AnnData): the expression, ``X`` (or ``layers['counts']`` when present) → ``X``;
* the **shapes** element the table annotates (its ``spatialdata_attrs``: ``region``, ``region_key``,
  ``instance_key``), matched to the table's rows by the instance key, never by row order:
  circles → spot centres and diameter; axis-aligned squares of one size → bin centres and bin size;
  other polygons → cell centroids and areas (``obs['unit_area_px2']``, ``obs['unit_area_um2']``); or the
  **labels** element (a segmentation mask) it annotates → each label's centroid and area, matched by label id;
* the **image** (the H&E): its full-resolution level (``scale0``) → ``uns['spatial'][slide_id]['images']``.

Coordinates are mapped with the elements' coordinate transformations (affine) into the pixel frame of the
image, through a coordinate system both share. spatialdata records no units (every axis' unit is
``"unit"``), so the pixel size (``metadata['microns_per_pixel']``) is recorded only when it is known; see
:func:`read_spatialdata`.

``spatialdata`` is an optional dependency (``pip install 'stgraph[spatialdata]'``), imported on first read.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ...keys import Key
from ..errors import SlideFormatError, missing_file
from ..image import to_rgb
from ..slide_id import set_slide_id
from .base import register_reader, validate_slide
from .visium import VISIUM_SPOT_DIAMETER_UM

__all__ = ["read_spatialdata", "is_spatialdata_store", "MICRON_SYSTEM_NAMES", "is_micron_system"]

#: Coordinate-system names taken to be in micrometres (also any name ending in ``_`` + one of them).
MICRON_SYSTEM_NAMES = ("um", "µm", "micron", "microns", "micrometer", "micrometers", "micrometre", "micrometres")

#: Relative tolerance of the square test (equal sides, area = side²) and of "the same mapping".
_TOL = 1e-3


def is_spatialdata_store(path: Path, kwargs: Optional[dict] = None) -> bool:
    """True when ``path`` is a folder ending in ``.zarr`` with zarr group metadata and a ``tables``,
    ``images`` or ``shapes`` group (checked on the file system only, nothing is read)."""
    path = Path(path)
    return (path.is_dir() and path.name.lower().endswith(".zarr")
            and ((path / "zarr.json").is_file() or (path / ".zgroup").is_file())
            and any((path / group).is_dir() for group in ("tables", "images", "shapes")))


def is_micron_system(name: str) -> bool:
    """Whether a coordinate system's name says it is in micrometres (:data:`MICRON_SYSTEM_NAMES`)."""
    lower = str(name).lower()
    return lower in MICRON_SYSTEM_NAMES or any(lower.endswith("_" + n) for n in MICRON_SYSTEM_NAMES)


def _import_spatialdata():
    try:
        import spatialdata
    except ImportError as err:
        raise ImportError(f"reading a SpatialData store needs the spatialdata package ({err}); install it with "
                          "pip install 'stgraph[spatialdata]'") from err
    return spatialdata


def _choose(kind: str, names: list, given: Optional[str], store: Path, what: str) -> str:
    """The one element of a kind, or the one ``given``; an error listing them otherwise."""
    listed = ", ".join(map(repr, names)) or "none"
    if given is not None:
        if given not in names:
            raise SlideFormatError(f"SpatialData store {store} has no {kind} {given!r}; its {kind}s: {listed}")
        return given
    if not names:
        raise SlideFormatError(f"SpatialData store {store} has no {kind}: {what}")
    if len(names) > 1:
        raise SlideFormatError(f"SpatialData store {store} has {len(names)} {kind}s ({listed}); choose one with "
                               f"{kind}=NAME")
    return names[0]


def _affines(element) -> dict:
    """Coordinate system → 3 × 3 affine (x, y, 1) from the element's intrinsic coordinates to it."""
    from spatialdata.transformations import get_transformation

    return {cs: np.asarray(t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), dtype=np.float64)
            for cs, t in get_transformation(element, get_all=True).items()}


def _uniform_scale(matrix: np.ndarray) -> Optional[float]:
    """``s`` when the affine is ``x ↦ s·x`` (no rotation, shear or translation), else ``None``."""
    lin, shift = matrix[:2, :2], matrix[:2, 2]
    s = float(lin[0, 0])
    if s > 0 and np.allclose(lin, s * np.eye(2), rtol=_TOL, atol=0) and np.allclose(shift, 0, atol=1e-9):
        return s
    return None


def _apply(matrix: np.ndarray, xy: np.ndarray) -> np.ndarray:
    return xy @ matrix[:2, :2].T + matrix[:2, 2]


def _pixel_size(matrix: np.ndarray, where: str) -> float:
    """Units per pixel of a 2-d affine's linear part (the square root of |det|); warns when anisotropic."""
    singular = np.linalg.svd(matrix[:2, :2], compute_uv=False)
    if singular.min() <= 0:
        raise SlideFormatError(f"{where}: the coordinate transformation is singular")
    if singular.max() / singular.min() > 1.01:
        warnings.warn(f"{where}: pixels are not square (scales {singular.max():.4g} and {singular.min():.4g}); using "
                      "their geometric mean as the pixel size", UserWarning, stacklevel=3)
    return float(np.sqrt(singular[0] * singular[1]))


def _read_image(element, where: str) -> np.ndarray:
    """The full-resolution level of an image element as (y, x, 3) uint8."""
    from xarray import DataTree

    if isinstance(element, DataTree):
        from spatialdata import get_pyramid_levels

        element = get_pyramid_levels(element, n=0)
    dims = tuple(element.dims)
    if "z" in dims:
        raise SlideFormatError(f"{where} is a 3-d image (dims {dims}); stgraph reads 2-d H&E images")
    order = ("y", "x", "c") if "c" in dims else ("y", "x")
    n_channels = int(element.sizes.get("c", 1))
    if n_channels not in (1, 3, 4):
        raise SlideFormatError(f"{where} has {n_channels} channels; stgraph reads an RGB(A) H&E image (a "
                               "fluorescence image is no H&E)")
    try:
        pixels = np.asarray(element.transpose(*order).data)
    except Exception as err:  # zarr / dask raise several types for damaged chunks
        raise SlideFormatError(f"cannot read {where}: {err}") from err
    return to_rgb(pixels)


def _unit_geometry(shapes, where: str):
    """(xy (n, 2), kind, size) in the element's own coordinates: kind ``circle`` (size: radii), ``square``
    (size: sides) or ``polygon`` (size: areas)."""
    import shapely

    geom = shapes.geometry
    types = set(geom.geom_type)
    if types <= {"Point"}:
        if "radius" not in shapes.columns:
            raise SlideFormatError(f"{where}: points without a 'radius' column are not circles")
        return np.column_stack([geom.x.to_numpy(), geom.y.to_numpy()]), "circle", shapes["radius"].to_numpy(float)
    if types <= {"Polygon", "MultiPolygon"}:
        centroids = geom.centroid
        xy = np.column_stack([centroids.x.to_numpy(), centroids.y.to_numpy()])
        area = geom.area.to_numpy(float)
        bounds = geom.bounds.to_numpy(float)  # minx, miny, maxx, maxy
        width, height = bounds[:, 2] - bounds[:, 0], bounds[:, 3] - bounds[:, 1]
        simple = (geom.geom_type.to_numpy() == "Polygon") & (shapely.get_num_coordinates(geom.to_numpy()) == 5)
        square = (simple & np.isclose(width, height, rtol=_TOL, atol=0)
                  & np.isclose(area, width * height, rtol=_TOL, atol=0))
        if len(area) and square.all() and np.allclose(width, np.median(width), rtol=0.01, atol=0):
            return xy, "square", width
        return xy, "polygon", area
    raise SlideFormatError(f"{where}: geometry types {sorted(types)} are not supported (circles or polygons)")


def _label_geometry(element, where: str, block_pixels: int = 1 << 22):
    """(label ids, centroids (n, 2) as x, y, areas in pixels) of a labels element's full-resolution level, in
    its own coordinates (pixel ``(row i, column j)`` covers ``[j, j + 1) × [i, i + 1)``, so a centroid is the
    mean of ``j + 0.5`` and ``i + 0.5``). Read by blocks of rows (about ``block_pixels`` pixels each), so a
    whole-slide mask never sits in memory at once; 0 is the background."""
    from xarray import DataTree

    if isinstance(element, DataTree):
        from spatialdata import get_pyramid_levels

        element = get_pyramid_levels(element, n=0)
    dims = tuple(element.dims)
    if dims != ("y", "x"):
        raise SlideFormatError(f"{where} is a labels element with dims {dims}; stgraph reads 2-d (y, x) labels")
    data, height = element.data, int(element.sizes["y"])
    step = max(1, block_pixels // max(1, int(element.sizes["x"])))
    parts = []
    for y0 in range(0, height, step):
        try:
            block = np.asarray(data[y0:y0 + step])
        except Exception as err:  # zarr / dask raise several types for damaged chunks
            raise SlideFormatError(f"cannot read {where}: {err}") from err
        rows, cols = np.nonzero(block)
        if not len(rows):
            continue
        uniq, inv = np.unique(block[rows, cols], return_inverse=True)
        parts.append(pd.DataFrame({"n": np.bincount(inv), "sx": np.bincount(inv, weights=cols + 0.5),
                                   "sy": np.bincount(inv, weights=rows + (y0 + 0.5))}, index=uniq))
    if not parts:
        raise SlideFormatError(f"{where}: the labels hold no cell (every pixel is 0, the background)")
    agg = pd.concat(parts).groupby(level=0, sort=True).sum()
    n = agg["n"].to_numpy(np.float64)
    return agg.index.to_numpy(), np.column_stack([agg["sx"].to_numpy() / n, agg["sy"].to_numpy() / n]), n


def _match_rows(table: AnnData, shapes, instance_key: str, where: str) -> np.ndarray:
    """Position in ``shapes`` of each table row, by the instance key."""
    if instance_key not in table.obs:
        raise SlideFormatError(f"{where}: the table has no obs[{instance_key!r}] (its instance key)")
    index = pd.Index(shapes.index)
    if index.has_duplicates:
        raise SlideFormatError(f"{where}: the shapes have duplicate indices, e.g. {index[index.duplicated()][:3].tolist()}")
    ids = pd.Index(table.obs[instance_key].to_numpy())
    pos = index.get_indexer(ids)
    if (pos < 0).any():  # e.g. integer ids in the table, string indices in the shapes
        pos = index.astype(str).get_indexer(ids.astype(str))
    if (pos < 0).any():
        missing = ids[pos < 0]
        raise SlideFormatError(f"{where}: {len(missing)} table row(s) have no shape with their {instance_key!r}, "
                               f"e.g. {missing[:3].tolist()}")
    return pos


def _frame(element_tf: dict, image_tf: dict, coordinate_system: Optional[str], where: str):
    """(coordinate system, element → frame affine, image → frame affine or None, frame) for the mapping.

    The frame is the image's pixels, or, when the image is a uniform downscale (scale > 1, no rotation or
    translation) of the coordinate system (Visium's ``hires``/``lowres`` images in spatialdata-io's
    ``<dataset_id>`` system of full-resolution pixels), the coordinate system itself."""
    shared = [cs for cs in element_tf if cs in image_tf]
    if coordinate_system is not None:
        if coordinate_system not in shared:
            raise SlideFormatError(f"{where}: coordinate_system={coordinate_system!r} is not shared by the element "
                                   f"and the image (shared: {shared or 'none'})")
        shared = [coordinate_system]
    if not shared:
        raise SlideFormatError(f"{where}: the element and the image share no coordinate system (element: "
                               f"{sorted(element_tf)}, image: {sorted(image_tf)}); add a transformation to a common "
                               "one with spatialdata.transformations.set_transformation")
    to_image = {cs: np.linalg.solve(image_tf[cs], element_tf[cs]) for cs in shared}
    first = to_image[shared[0]]
    if not all(np.allclose(m, first, rtol=_TOL, atol=1e-6 * max(1.0, np.abs(first).max())) for m in to_image.values()):
        raise SlideFormatError(f"{where}: the element and the image share {len(shared)} coordinate systems that place "
                               f"them differently ({', '.join(map(repr, shared))}); choose one with "
                               "coordinate_system=NAME")
    scales = {cs: _uniform_scale(image_tf[cs]) for cs in shared}
    coarse = {cs: s for cs, s in scales.items() if s is not None and s > 1 + _TOL}
    if coarse:
        cs = max(coarse, key=coarse.get)
        return cs, element_tf[cs], image_tf[cs], "coordinate_system"
    micron = [cs for cs in shared if is_micron_system(cs)]
    cs = micron[0] if micron else shared[0]
    return cs, to_image[cs], image_tf[cs], "image"


@register_reader("spatialdata", detect=is_spatialdata_store)
def read_spatialdata(path: str | os.PathLike, table: Optional[str] = None, image: Optional[str] = None,
                     coordinate_system: Optional[str] = None, slide_id: Optional[str] = None,
                     region: Optional[str] = None, microns_per_pixel: Optional[float] = None) -> AnnData:
    """Read one slide from a SpatialData ``.zarr`` store.

    Parameters
    ----------
    path
        The store (a folder ending in ``.zarr``).
    table
        The table holding the expression; needed when the store has several.
    image
        The H&E image element; needed when the store has several (e.g. spatialdata-io's Visium stores hold
        ``<id>_hires_image`` and ``<id>_lowres_image``).
    coordinate_system
        The coordinate system that places the table's shapes on the image; needed only when the element and
        the image share several that place them differently.
    slide_id
        Slide id; default: the store's folder name without ``.zarr``.
    region
        The element the table annotates, when it annotates several (rows of the others are left out).
    microns_per_pixel
        Full-resolution pixel size, µm; overrides the rule below.

    Returns
    -------
    AnnData
        ``X`` raw counts (CSR float32, from ``layers['counts']`` when the table has it, else ``X``), the
        table's ``obs`` (without its region column) and ``var``; ``obsm['spatial']`` spot / bin centres or
        cell centroids, x, y in full-resolution pixels; ``uns['spatial'][slide_id]``: ``images`` (the image's
        full-resolution level), ``scalefactors`` (``spot_diameter_fullres``: circle diameter, square side or
        the diameter of a circle of the median cell area), ``metadata`` (``unit_shape``: circle / square /
        polygon, ``bin_size_px``, ``microns_per_pixel`` when known, ``fullres_shape``, ``source_store``).
        Cells also get ``obs['unit_area_px2']`` (and ``obs['unit_area_um2']`` with a known pixel size).

    Notes
    -----
    **Pixel frame.** Shapes are mapped into the pixels of the image's full-resolution level (``scale0``),
    through the affine transformations of a coordinate system they share (``images['fullres']``). One
    exception keeps Visium stores in their own frame: when the image is a uniform downscale of the
    coordinate system (spatialdata-io puts the ``hires`` image in the ``<dataset_id>`` system of Space Ranger
    full-resolution pixels with a scale of 1 / ``tissue_hires_scalef``), coordinates stay in the coordinate
    system and the image is ``images['hires']`` with ``tissue_hires_scalef`` = 1 / scale, as
    :func:`~stgraph.data.readers.read_visium` gives them.

    **Pixel size.** spatialdata records no units, so ``metadata['microns_per_pixel']`` is set only when:
    ``microns_per_pixel`` is given; or the coordinate system used is named as micrometres (``um``,
    ``microns``, ``micrometer``, ... or a name ending in ``_um``, see :data:`MICRON_SYSTEM_NAMES`), when it is
    the image's scale into that system; or the store was written by ``spatialdata_io.visium``, when it is
    55 µm / the spot diameter (as for a Space Ranger folder). Otherwise it is left out (pass
    ``microns_per_pixel``: spatialdata-io's Xenium ``global`` system, for one, is in morphology-image pixels,
    0.2125 µm each).

    A table annotating a labels element (a segmentation mask, as spatialdata-io's Xenium reader writes) gives
    cells at their label's centroid with its area; points are not read.
    """
    store = Path(path)
    if not store.is_dir():
        raise missing_file(store, "SpatialData store (.zarr folder)")
    spatialdata = _import_spatialdata()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # spatialdata's own notes on versions and formats
            sdata = spatialdata.read_zarr(store, selection=("images", "labels", "shapes", "tables"))
    except Exception as err:  # zarr, ome-zarr and geopandas raise many types on a damaged store
        raise SlideFormatError(f"cannot read SpatialData store {store}: {err}") from err

    table_name = _choose("table", list(sdata.tables), table, store,
                         "the expression lives in a table (an AnnData annotating shapes)")
    t = sdata.tables[table_name]
    where_table = f"table {table_name!r} of SpatialData store {store}"
    from spatialdata.models import get_table_keys

    try:
        regions, region_key, instance_key = get_table_keys(t)
    except (ValueError, KeyError, TypeError) as err:
        raise SlideFormatError(f"{where_table} annotates no element (no region / region_key / instance_key in its "
                               "spatialdata_attrs); parse it with spatialdata.models.TableModel.parse(table, "
                               "region=..., region_key=..., instance_key=...)") from err
    regions = [regions] if isinstance(regions, str) else list(regions or [])
    if region is not None:
        if region not in regions:
            raise SlideFormatError(f"{where_table} does not annotate {region!r}; it annotates {regions}")
        element_name = region
    elif len(regions) == 1:
        element_name = regions[0]
    else:
        raise SlideFormatError(f"{where_table} annotates {len(regions)} elements {regions}; choose one with region=NAME"
                               if regions else f"{where_table} annotates no element (its region is empty)")
    where = f"SpatialData store {store}, element {element_name!r}"
    is_labels = element_name in sdata.labels
    if not is_labels and element_name not in sdata.shapes:
        raise SlideFormatError(f"{where_table} annotates {element_name!r}, which is neither a shapes nor a labels "
                               f"element of the store (shapes: {list(sdata.shapes) or 'none'}; labels: "
                               f"{list(sdata.labels) or 'none'})")
    if region_key in t.obs:
        rows = t.obs[region_key].astype(str).to_numpy() == element_name
        if not rows.all():
            t = t[rows]
    if t.n_obs == 0:
        raise SlideFormatError(f"{where_table} has no row for {element_name!r}")
    if is_labels:  # a segmentation mask: each label id is a cell, at its centroid with its pixel area
        element = sdata.labels[element_name]
        ids, xy_all, area_all = _label_geometry(element, where)
        pos = _match_rows(t, pd.DataFrame(index=pd.Index(ids)), instance_key, f"{where} (table {table_name!r})")
        xy_el, unit, size = xy_all[pos], "polygon", area_all[pos]
    else:
        element = sdata.shapes[element_name]
        pos = _match_rows(t, element, instance_key, f"{where} (table {table_name!r})")
        xy_el, unit, size = _unit_geometry(element.iloc[pos], where)

    image_name = _choose("image", list(sdata.images), image, store,
                         "stgraph predicts expression from the H&E image, which must be in the store")
    where_pair = f"SpatialData store {store}, element {element_name!r} and image {image_name!r}"
    cs, to_frame, image_to_cs, frame = _frame(_affines(element), _affines(sdata.images[image_name]),
                                              coordinate_system, where_pair)
    pixels = _read_image(sdata.images[image_name], f"image {image_name!r} of SpatialData store {store}")
    xy = _apply(to_frame, xy_el)
    det = abs(float(np.linalg.det(to_frame[:2, :2])))
    scale = float(np.sqrt(det))

    images, scalefactors = {}, {}
    h, w = pixels.shape[:2]
    if frame == "image":
        images[Key.image.fullres] = pixels
        scalefactors[Key.scalefactor.fullres] = 1.0
        fullres_shape = [h, w]
    else:
        s = _uniform_scale(image_to_cs)
        images[Key.image.hires] = pixels
        scalefactors[Key.scalefactor.hires] = 1.0 / s
        fullres_shape = [int(round(h * s)), int(round(w * s))]

    metadata = {Key.metadata.unit_shape: unit, Key.metadata.fullres_shape: fullres_shape,
                Key.metadata.source_store: str(store.resolve()), "spatialdata_table": table_name,
                "spatialdata_element": element_name, "spatialdata_image": image_name,
                "spatialdata_coordinate_system": cs}
    obs = t.obs.drop(columns=[c for c in (region_key,) if c in t.obs]).copy()
    if unit == "circle":
        scalefactors[Key.scalefactor.spot_diameter] = 2.0 * float(np.median(size)) * scale
    elif unit == "square":
        side = float(np.median(size)) * scale
        scalefactors[Key.scalefactor.spot_diameter] = side
        metadata[Key.metadata.bin_size_px] = side
    else:
        area_px = size * det
        scalefactors[Key.scalefactor.spot_diameter] = 2.0 * float(np.sqrt(np.median(area_px) / np.pi))
        obs[Key.obs.unit_area_px2] = area_px

    mpp = microns_per_pixel
    if mpp is None and is_micron_system(cs):
        mpp = 1.0 if frame == "coordinate_system" else _pixel_size(image_to_cs, where_pair)
    elif (mpp is None and unit == "circle" and sdata.attrs.get("spatialdata_io_reader") == "visium"
          and scalefactors[Key.scalefactor.spot_diameter] > 0):
        mpp = VISIUM_SPOT_DIAMETER_UM / scalefactors[Key.scalefactor.spot_diameter]
    if mpp is not None:
        mpp = float(mpp)
        if not (np.isfinite(mpp) and mpp > 0):
            raise ValueError(f"{where_pair}: microns_per_pixel must be a positive number, got {mpp!r}")
        metadata[Key.metadata.microns_per_pixel] = mpp
        if unit == "square":
            metadata[Key.metadata.bin_size_um] = metadata[Key.metadata.bin_size_px] * mpp
        if unit == "polygon":
            obs[Key.obs.unit_area_um2] = obs[Key.obs.unit_area_px2] * mpp ** 2

    counts = t.layers[Key.layers.counts] if Key.layers.counts in t.layers else t.X
    if counts is None:
        raise SlideFormatError(f"{where_table} has no expression matrix (X is empty)")
    x = sp.csr_matrix(counts, dtype=np.float32)
    adata = AnnData(X=x, obs=obs, var=t.var.copy())
    adata.obs_names = t.obs_names.astype(str)
    adata.var_names_make_unique()
    adata.obsm[Key.obsm.spatial] = np.asarray(xy, dtype=np.float64)
    slide_id = str(slide_id) if slide_id is not None else (store.name[:-5] if store.name.lower().endswith(".zarr")
                                                           else store.name)
    adata.uns[Key.uns.spatial] = {slide_id: {Key.uns.images: images, Key.uns.scalefactors: scalefactors,
                                             Key.uns.metadata: metadata}}
    set_slide_id(adata, slide_id)
    return validate_slide(adata, source=f"{where} (table {table_name!r}, image {image_name!r})")
