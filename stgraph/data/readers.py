"""Readers: slides on disk → one :class:`~anndata.AnnData` per slide in the stgraph convention.

Every reader returns ``X`` (raw counts, CSR float32), ``obsm['spatial']`` (n, 2) spot centres as x, y in
full-resolution image pixels, ``obs['slide_id']`` (categorical) and ``uns['spatial'][slide_id]`` with
``images``, ``scalefactors`` and ``metadata`` (see ``docs/architecture.md``). Missing files raise
:class:`FileNotFoundError`; bad content raises :class:`~stgraph.data.errors.SlideFormatError`; both name
the file.
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .errors import SlideFormatError, missing_file, require_file

__all__ = [
    "HER2ST_IMAGED_SECTIONS",
    "HER2ST_SPOT_DIAMETER_PX",
    "IMAGE_SUFFIXES",
    "read_st_legacy",
    "read_her2st",
    "read_visium",
    "read_h5ad",
    "read_spot_csv",
    "read_slide",
    "validate_slide",
    "image_size",
    "open_image",
]

#: HER2+ sections whose H&E image is available (patient B: B4; patient C: C2–C6).
HER2ST_IMAGED_SECTIONS = ("B4", "C2", "C3", "C4", "C5", "C6")
#: Legacy ST spots are 100 µm across; HER2+ images are about 1 µm per pixel.
HER2ST_SPOT_DIAMETER_PX = 100.0
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
_TIFF_SUFFIXES = (".tif", ".tiff")
_SELECTION_COLUMNS = ("x", "y", "pixel_x", "pixel_y", "selected")


# ----------------------------------------------------------------------------------------------- images
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


def _thumbnail(path: Path, max_side: int) -> np.ndarray:
    """Decode ``path`` downscaled so its longest side is ≤ ``max_side`` (RGB uint8 (h, w, 3)).

    PIL's JPEG draft mode decodes at 1/2–1/8 scale directly, so this costs a fraction of a full decode.
    """
    if path.suffix.lower() in _TIFF_SUFFIXES:
        from .patches import load_image_file

        return load_image_file(path).thumbnail(max_side)
    img = open_image(path)
    try:
        with _no_pixel_limit():
            img.thumbnail((max_side, max_side))
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as err:  # truncated or corrupt pixel data
        raise SlideFormatError(f"cannot decode image {path}: {err}") from err
    finally:
        img.close()


def _check_inside(xy: np.ndarray, size: tuple[int, int], image_path: Path, what: str) -> None:
    """Raise when a spot centre lies outside the image (0 ≤ x < width, 0 ≤ y < height)."""
    width, height = size
    outside = (xy[:, 0] < 0) | (xy[:, 0] >= width) | (xy[:, 1] < 0) | (xy[:, 1] >= height)
    if outside.any():
        first = np.flatnonzero(outside)[:5]
        examples = ", ".join(f"({xy[i, 0]:.1f}, {xy[i, 1]:.1f})" for i in first)
        raise SlideFormatError(
            f"{outside.sum()} spot(s) of {what} lie outside image {image_path} of size "
            f"{width} × {height} px (width × height), e.g. {examples}; is this the right image?"
        )


def _attach_image(adata: AnnData, slide_id: str, image_path: Optional[Path], spot_diameter: Optional[float],
                  hires_max_side: Optional[int], microns_per_pixel: Optional[float], what: str) -> None:
    """Fill ``uns['spatial'][slide_id]``; validate spot positions against the image and store a thumbnail."""
    images, scalefactors, metadata = {}, {}, {}
    if spot_diameter is not None:
        scalefactors["spot_diameter_fullres"] = float(spot_diameter)
    if microns_per_pixel is not None:
        metadata["microns_per_pixel"] = float(microns_per_pixel)
    if image_path is not None:
        image_path = require_file(image_path, "image file").resolve()
        size = image_size(image_path)
        _check_inside(np.asarray(adata.obsm["spatial"]), size, image_path, what)
        metadata["source_image_path"] = str(image_path)
        metadata["fullres_shape"] = [size[1], size[0]]
        if hires_max_side:
            thumb = _thumbnail(image_path, hires_max_side)
            images["hires"] = thumb
            scalefactors["tissue_hires_scalef"] = thumb.shape[1] / size[0]
    adata.uns["spatial"] = {slide_id: {"images": images, "scalefactors": scalefactors, "metadata": metadata}}


# ----------------------------------------------------------------------------------------------- helpers
def _strip_suffixes(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".tsv", ".csv", ".txt"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _counts_to_csr(counts: pd.DataFrame, path: Path) -> sp.csr_matrix:
    """Validate a spots × genes count table (finite, ≥ 0, numeric) and return it as CSR float32."""
    try:
        values = counts.to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise SlideFormatError(f"counts file {path} holds non-numeric values: {err}") from err
    n_nan = int(np.isnan(values).sum())
    if n_nan:
        raise SlideFormatError(f"counts file {path} holds {n_nan} missing (NaN) value(s); counts must be complete")
    if np.isinf(values).any():
        raise SlideFormatError(f"counts file {path} holds infinite values")
    n_neg = int((values < 0).sum())
    if n_neg:
        raise SlideFormatError(f"counts file {path} holds {n_neg} negative value(s); counts must be ≥ 0")
    return sp.csr_matrix(values.astype(np.float32))


def _duplicates(index: pd.Index) -> list:
    return index[index.duplicated()].unique().tolist()


def _finish_obs(adata: AnnData, slide_id: str) -> AnnData:
    adata.obs["slide_id"] = pd.Categorical([slide_id] * adata.n_obs, categories=[slide_id])
    return adata


# ------------------------------------------------------------------------------------------- legacy ST
def _read_legacy_counts(path: Path) -> pd.DataFrame:
    try:
        counts = pd.read_csv(path, sep="\t", index_col=0)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as err:
        raise SlideFormatError(f"cannot parse counts file {path} as a tab-separated table: {err}") from err
    counts.index = counts.index.astype(str)
    if counts.shape[0] == 0 or counts.shape[1] == 0:
        raise SlideFormatError(f"counts file {path} is empty ({counts.shape[0]} spots × {counts.shape[1]} genes)")
    dup = _duplicates(counts.index)
    if dup:
        raise SlideFormatError(f"counts file {path} has duplicate spot barcodes: {dup[:10]}")
    dup = _duplicates(counts.columns)
    if dup:
        raise SlideFormatError(f"counts file {path} has duplicate gene names: {dup[:10]}")
    return counts


def _read_selection(path: Path) -> pd.DataFrame:
    try:
        spots = pd.read_csv(path, sep="\t")
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise SlideFormatError(f"cannot parse spot file {path} as a tab-separated table: {err}") from err
    missing = [c for c in _SELECTION_COLUMNS if c not in spots.columns]
    if missing:
        raise SlideFormatError(
            f"spot file {path} lacks column(s) {missing}; expected {' '.join(_SELECTION_COLUMNS)} "
            f"(found {list(spots.columns)})"
        )
    spots = spots[spots["selected"] == 1].copy()
    grid = spots[["x", "y"]].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    if not np.isfinite(grid).all() or (grid != np.round(grid)).any():
        raise SlideFormatError(f"spot file {path} has missing or non-integer x/y array coordinates")
    spots.index = [f"{int(x)}x{int(y)}" for x, y in grid]
    dup = _duplicates(spots.index)
    if dup:
        raise SlideFormatError(f"spot file {path} lists duplicate selected spots (x×y): {dup[:10]}")
    xy = spots[["pixel_x", "pixel_y"]].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    if not np.isfinite(xy).all():
        raise SlideFormatError(f"spot file {path} has missing or non-finite pixel_x/pixel_y values")
    return spots


def read_st_legacy(
    counts_path: str | os.PathLike,
    spots_path: str | os.PathLike,
    image_path: Optional[str | os.PathLike] = None,
    slide_id: Optional[str] = None,
    spot_diameter_fullres: float = HER2ST_SPOT_DIAMETER_PX,
    microns_per_pixel: Optional[float] = None,
    hires_max_side: Optional[int] = 2000,
) -> AnnData:
    """Read a legacy Spatial Transcriptomics section (the HER2+ / Hist2ST format).

    Parameters
    ----------
    counts_path
        ``.tsv`` or ``.tsv.gz``: spots × genes raw counts, tab separated, row index ``"{x}x{y}"``.
    spots_path
        ``*_selection.tsv`` with columns ``x y new_x new_y pixel_x pixel_y selected``.
    image_path
        Full-resolution H&E image. Its size is read without decoding to check that every spot lies inside
        it; it is stored as ``metadata['source_image_path']`` and read lazily for patches.
    slide_id
        Library id; default: the counts file name without its suffixes.
    spot_diameter_fullres
        Spot diameter in image pixels (HER2+: 100 µm spots at ~1 µm/px → ~100 px).
    microns_per_pixel
        Stored as ``metadata['microns_per_pixel']`` when known (enables ``extract_patches(patch_um=…)``).
    hires_max_side
        Store a downscaled ``images['hires']`` whose longest side is this many pixels (for plotting, e.g.
        ``sc.pl.spatial``), with ``tissue_hires_scalef`` = thumbnail width / full width. ``None``: skip it
        (no pixel decoding at all).

    Returns
    -------
    AnnData
        Selected spots that are also in the counts, in the counts' row order. ``X`` raw counts
        (CSR float32); ``obsm['spatial']`` = (pixel_x, pixel_y); ``obs``: ``x``, ``y``, ``new_x``,
        ``new_y``, ``array_row`` = y, ``array_col`` = x, ``slide_id``.
    """
    counts_path = require_file(counts_path, "counts file (spots × genes .tsv/.tsv.gz)")
    spots_path = require_file(spots_path, "spot selection file (*_selection.tsv)")
    if image_path is not None:
        require_file(image_path, "H&E image")
    slide_id = str(slide_id) if slide_id is not None else _strip_suffixes(counts_path)

    counts = _read_legacy_counts(counts_path)
    spots = _read_selection(spots_path)
    keep = counts.index[counts.index.isin(spots.index)]
    if len(keep) == 0:
        raise SlideFormatError(
            f"no spot is both selected in {spots_path} and present in {counts_path} "
            f"(counts barcodes e.g. {counts.index[:3].tolist()}, selected e.g. {spots.index[:3].tolist()}); "
            "do the two files belong to the same section?"
        )
    counts = counts.loc[keep]
    spots = spots.loc[keep]

    obs = pd.DataFrame(index=pd.Index(keep, name=None))
    for col in ("x", "y"):
        obs[col] = spots[col].astype(int).to_numpy()
    for col in ("new_x", "new_y"):
        if col in spots:
            obs[col] = spots[col].astype(float).to_numpy()
    obs["array_row"] = obs["y"].to_numpy()
    obs["array_col"] = obs["x"].to_numpy()
    adata = AnnData(X=_counts_to_csr(counts, counts_path), obs=obs, var=pd.DataFrame(index=counts.columns.astype(str)))
    adata.obsm["spatial"] = spots[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    _finish_obs(adata, slide_id)
    _attach_image(adata, slide_id, Path(image_path) if image_path is not None else None, spot_diameter_fullres,
                  hires_max_side, microns_per_pixel, what=f"spot file {spots_path}")
    return adata


def _her2st_image(root: Path, section: str) -> Path:
    folder = root / "ST-imgs" / section[:1] / section
    if not folder.is_dir():
        raise missing_file(folder, f"image folder of HER2+ section {section}")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if len(images) != 1:
        raise SlideFormatError(f"expected one .jpg image in {folder}, found {[p.name for p in images]}")
    return images[0]


def read_her2st(root: str | os.PathLike, section: str, **kwargs) -> AnnData:
    """Read one section of the HER2+ breast cancer data set (Andersson et al. 2021).

    Parameters
    ----------
    root
        Folder holding ``ST-cnts/<S>.tsv.gz``, ``ST-spotfiles/<S>_selection.tsv`` and
        ``ST-imgs/<patient>/<S>/*.jpg`` (patient = first letter of the section).
    section
        Section id, e.g. ``"B4"``; see :data:`HER2ST_IMAGED_SECTIONS` for the ones with an image.
    **kwargs
        Passed to :func:`read_st_legacy` (``hires_max_side``, ``microns_per_pixel``…).
    """
    root = Path(root)
    if not root.is_dir():
        raise missing_file(root, "HER2+ data folder (with ST-cnts/, ST-spotfiles/, ST-imgs/)")
    section = str(section)
    return read_st_legacy(
        root / "ST-cnts" / f"{section}.tsv.gz",
        root / "ST-spotfiles" / f"{section}_selection.tsv",
        _her2st_image(root, section),
        slide_id=section,
        **kwargs,
    )


# ------------------------------------------------------------------------------------------- Visium
_VISIUM_MATRICES = ("filtered_feature_bc_matrix.h5", "raw_feature_bc_matrix.h5", "raw_probe_bc_matrix.h5")
_VISIUM_POSITIONS = ("tissue_positions.csv", "tissue_positions_list.csv")
_VISIUM_POSITION_COLUMNS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres",
                            "pxl_col_in_fullres"]


def _read_10x_matrix(path: Path) -> AnnData:
    import scanpy as sc

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Variable names are not unique" — handled below
            adata = sc.read_10x_h5(path)
    except (OSError, KeyError, ValueError) as err:
        raise SlideFormatError(f"cannot read 10x matrix {path}: {err}") from err
    if "filtered_barcodes" in adata.obs:
        # Probe-based raw matrices flag the barcodes Space Ranger called as tissue; keep those.
        adata = adata[adata.obs["filtered_barcodes"].astype(bool).to_numpy()].copy()
        del adata.obs["filtered_barcodes"]
    if "filtered_probes" in adata.var and "gene_ids" in adata.var:
        adata = _probes_to_genes(adata)
    adata.var_names_make_unique()
    return adata


def _probes_to_genes(adata: AnnData) -> AnnData:
    """Sum the filtered probes of each gene (what Space Ranger writes to the filtered matrix)."""
    probes = adata[:, adata.var["filtered_probes"].astype(bool).to_numpy()]
    gene_ids = probes.var["gene_ids"].astype(str).to_numpy()
    genes, inverse = np.unique(gene_ids, return_inverse=True)
    first = pd.Series(np.arange(len(gene_ids))).groupby(inverse).first().to_numpy()
    indicator = sp.csr_matrix((np.ones(len(gene_ids), np.float32), (np.arange(len(gene_ids)), inverse)),
                              shape=(len(gene_ids), len(genes)))
    x = sp.csr_matrix(probes.X @ indicator, dtype=np.float32)
    name_col = "gene_name" if "gene_name" in probes.var else "gene_ids"
    var = pd.DataFrame({"gene_ids": genes}, index=probes.var[name_col].astype(str).to_numpy()[first])
    return AnnData(X=x, obs=probes.obs.copy(), var=var)


def _read_positions(path: Path) -> pd.DataFrame:
    header = 0 if path.name == "tissue_positions.csv" else None
    try:
        pos = pd.read_csv(path, header=header)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as err:
        raise SlideFormatError(f"cannot parse spot positions {path}: {err}") from err
    if header is None:
        if pos.shape[1] != 6:
            raise SlideFormatError(f"{path} should have 6 columns ({', '.join(_VISIUM_POSITION_COLUMNS)}), "
                                   f"found {pos.shape[1]}")
        pos.columns = _VISIUM_POSITION_COLUMNS
    missing = [c for c in _VISIUM_POSITION_COLUMNS if c not in pos.columns]
    if missing:
        raise SlideFormatError(f"{path} lacks column(s) {missing} (found {list(pos.columns)})")
    pos = pos.set_index("barcode")
    pos.index = pos.index.astype(str)
    dup = _duplicates(pos.index)
    if dup:
        raise SlideFormatError(f"{path} has duplicate barcodes: {dup[:10]}")
    return pos


def _load_png(path: Path) -> Optional[np.ndarray]:
    if not path.is_file():
        return None
    with open_image(path) as img:
        try:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
        except OSError as err:
            raise SlideFormatError(f"cannot decode image {path}: {err}") from err


def read_visium(
    path: str | os.PathLike,
    library_id: Optional[str] = None,
    fullres_image: Optional[str | os.PathLike] = None,
    require_spatial: bool = True,
    load_images: bool = True,
    microns_per_pixel: Optional[float] = None,
) -> AnnData:
    """Read a 10x Genomics Space Ranger output folder.

    Parameters
    ----------
    path
        Folder with ``filtered_feature_bc_matrix.h5`` and ``spatial/`` (``tissue_positions.csv`` with a
        header, Space Ranger ≥ 2, or ``tissue_positions_list.csv`` without one, 1.x;
        ``scalefactors_json.json``; ``tissue_hires_image.png``/``tissue_lowres_image.png``).
        When the filtered matrix is absent, ``raw_feature_bc_matrix.h5`` or ``raw_probe_bc_matrix.h5`` is
        read instead (with a warning): spots are restricted to the tissue (``in_tissue`` = 1, or the
        matrix's ``filtered_barcodes`` flags), and probe counts are summed per gene over the filtered probes.
    library_id
        Slide id; default: the folder name (its parent's name for a folder called ``outs``).
    fullres_image
        The full-resolution image (e.g. a TIFF); its size is checked against the spots and it is stored as
        ``metadata['source_image_path']`` for patch extraction.
    require_spatial
        When the folder has no ``spatial/`` positions: raise :class:`FileNotFoundError` (default), or, with
        ``False``, warn and return the expression alone (no ``obsm['spatial']``; not usable for patches).
    load_images
        Store the hires/lowres PNGs in ``uns['spatial'][library_id]['images']``.

    Returns
    -------
    AnnData
        In-tissue spots of the matrix; ``obsm['spatial']`` = (``pxl_col_in_fullres``,
        ``pxl_row_in_fullres``), ``obs`` with ``in_tissue``, ``array_row``, ``array_col``, ``slide_id``.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise missing_file(folder, "Space Ranger output folder")
    matrix_path = next((folder / m for m in _VISIUM_MATRICES if (folder / m).is_file()), None)
    if matrix_path is None:
        raise missing_file(folder / _VISIUM_MATRICES[0],
                           f"10x count matrix (looked for {', '.join(_VISIUM_MATRICES)} in {folder})")
    spatial_dir = folder / "spatial"
    positions_path = next((spatial_dir / p for p in _VISIUM_POSITIONS if (spatial_dir / p).is_file()), None)
    looked = " or ".join(str(spatial_dir / p) for p in _VISIUM_POSITIONS)
    if positions_path is None and require_spatial:
        raise FileNotFoundError(
            f"Space Ranger folder {folder} has no spot positions: {looked} not found (they give "
            "obsm['spatial']; pass require_spatial=False to read the count matrix alone)")
    if matrix_path.name != _VISIUM_MATRICES[0]:
        warnings.warn(f"{folder} has no {_VISIUM_MATRICES[0]}; reading {matrix_path.name} and keeping the "
                      "spots Space Ranger called as tissue", UserWarning, stacklevel=2)
    adata = _read_10x_matrix(matrix_path)
    library_id = str(library_id) if library_id is not None else _default_library_id(folder)
    if positions_path is None:
        warnings.warn(f"no spot positions ({looked}); returning expression without obsm['spatial']",
                      UserWarning, stacklevel=2)
        adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
        adata.uns["spatial"] = {library_id: {"images": {}, "scalefactors": {},
                                             "metadata": {"source_matrix": str(matrix_path.resolve())}}}
        return _finish_obs(adata, library_id)

    positions = _read_positions(positions_path)
    unknown = adata.obs_names[~adata.obs_names.isin(positions.index)]
    if len(unknown):
        raise SlideFormatError(f"{len(unknown)} barcode(s) of {matrix_path} are missing from {positions_path}, "
                               f"e.g. {unknown[:3].tolist()}")
    pos = positions.loc[adata.obs_names]
    in_tissue = pos["in_tissue"].to_numpy() == 1
    adata = adata[in_tissue].copy()
    pos = pos.loc[in_tissue]
    if adata.n_obs == 0:
        raise SlideFormatError(f"no spot of {matrix_path} is marked in_tissue in {positions_path}")
    for col in ("in_tissue", "array_row", "array_col"):
        adata.obs[col] = pos[col].astype(int).to_numpy()
    adata.obsm["spatial"] = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64)
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    _finish_obs(adata, library_id)

    sf_path = require_file(spatial_dir / "scalefactors_json.json", "Visium scale factors")
    try:
        scalefactors = {k: float(v) for k, v in json.loads(sf_path.read_text()).items()}
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise SlideFormatError(f"cannot parse scale factors {sf_path}: {err}") from err
    images = {}
    if load_images:
        for res in ("hires", "lowres"):
            img = _load_png(spatial_dir / f"tissue_{res}_image.png")
            if img is not None:
                images[res] = img
    metadata = {"source_matrix": str(matrix_path.resolve())}
    if microns_per_pixel is not None:
        metadata["microns_per_pixel"] = float(microns_per_pixel)
    if fullres_image is not None:
        fullres_image = require_file(fullres_image, "full-resolution image").resolve()
        size = image_size(fullres_image)
        _check_inside(adata.obsm["spatial"], size, fullres_image, what=f"{positions_path}")
        metadata["source_image_path"] = str(fullres_image)
        metadata["fullres_shape"] = [size[1], size[0]]
    adata.uns["spatial"] = {library_id: {"images": images, "scalefactors": scalefactors, "metadata": metadata}}
    return adata


def _default_library_id(folder: Path) -> str:
    """The folder name, or its parent's for Space Ranger's generic ``outs`` folder.

    (The ``library_ids`` stored in the matrix are often generic, e.g. ``custom``, and would collide.)
    """
    folder = folder.resolve()
    return folder.parent.name if folder.name == "outs" else folder.name


# ------------------------------------------------------------------------------------------- h5ad / csv
def validate_slide(adata: AnnData, source: str = "slide") -> AnnData:
    """Check the stgraph convention; raise :class:`SlideFormatError` naming ``source`` on a violation.

    Checks ``obsm['spatial']`` (present, shape (n, 2), finite), unique spot names, finite non-negative
    ``X`` when it has genes, and a single ``obs['slide_id']`` (filled from ``uns['spatial']`` when absent).
    """
    if adata.n_obs == 0:
        raise SlideFormatError(f"{source} has no spots")
    if "spatial" not in adata.obsm:
        raise SlideFormatError(f"{source} has no obsm['spatial'] (spot centres in full-resolution pixels)")
    xy = np.asarray(adata.obsm["spatial"])
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise SlideFormatError(f"{source}: obsm['spatial'] must be (n_spots, 2) x, y; got shape {xy.shape}")
    if not np.issubdtype(xy.dtype, np.number) or not np.isfinite(xy).all():
        raise SlideFormatError(f"{source}: obsm['spatial'] holds missing or non-finite coordinates")
    dup = _duplicates(adata.obs_names)
    if dup:
        raise SlideFormatError(f"{source} has duplicate spot names: {dup[:10]}")
    if adata.n_vars:
        data = adata.X.data if sp.issparse(adata.X) else np.asarray(adata.X)
        if not np.isfinite(data).all():
            raise SlideFormatError(f"{source}: X holds NaN or infinite values")
    if "slide_id" not in adata.obs:
        libs = list(adata.uns.get("spatial", {}))
        if len(libs) != 1:
            raise SlideFormatError(f"{source} has no obs['slide_id'] and {len(libs)} libraries in uns['spatial']; "
                                   "cannot tell its slide id")
        _finish_obs(adata, str(libs[0]))
    ids = adata.obs["slide_id"].astype(str).unique()
    if len(ids) != 1:
        raise SlideFormatError(f"{source} mixes {len(ids)} slide ids {list(ids)[:5]}; one slide per AnnData")
    if not isinstance(adata.obs["slide_id"].dtype, pd.CategoricalDtype):
        _finish_obs(adata, str(ids[0]))
    return adata


def read_h5ad(path: str | os.PathLike) -> AnnData:
    """Read an ``.h5ad`` slide and check the stgraph convention (see :func:`validate_slide`)."""
    import anndata

    path = require_file(path, "AnnData file (.h5ad)")
    try:
        adata = anndata.read_h5ad(path)
    except (OSError, KeyError, ValueError) as err:
        raise SlideFormatError(f"cannot read {path} as an .h5ad file: {err}") from err
    return validate_slide(adata, source=str(path))


def read_spot_csv(
    image_path: str | os.PathLike,
    csv_path: str | os.PathLike,
    slide_id: Optional[str] = None,
    spot_diameter_fullres: Optional[float] = None,
    microns_per_pixel: Optional[float] = None,
    hires_max_side: Optional[int] = 2000,
) -> AnnData:
    """A slide with an image and spot centres but no expression (to predict from the image alone).

    Parameters
    ----------
    image_path
        Full-resolution H&E image.
    csv_path
        CSV with columns ``x, y`` or ``pixel_x, pixel_y`` (full-resolution pixels); optional ``barcode``
        column (spot names; default ``spot_<i>``) and optional ``array_row``/``array_col``.
    slide_id
        Default: the image file name without suffix.

    Returns
    -------
    AnnData
        ``X`` an empty (n_spots × 0) CSR float32 matrix, ``obsm['spatial']``, ``obs['slide_id']``.
    """
    image_path = require_file(image_path, "H&E image")
    csv_path = require_file(csv_path, "spot CSV (columns x,y or pixel_x,pixel_y)")
    slide_id = str(slide_id) if slide_id is not None else image_path.stem
    try:
        table = pd.read_csv(csv_path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise SlideFormatError(f"cannot parse spot CSV {csv_path}: {err}") from err
    for cx, cy in (("pixel_x", "pixel_y"), ("x", "y")):
        if cx in table and cy in table:
            break
    else:
        raise SlideFormatError(f"spot CSV {csv_path} needs columns x,y or pixel_x,pixel_y; found {list(table.columns)}")
    if len(table) == 0:
        raise SlideFormatError(f"spot CSV {csv_path} lists no spots")
    xy = pd.DataFrame({"x": pd.to_numeric(table[cx], errors="coerce"),
                       "y": pd.to_numeric(table[cy], errors="coerce")}).to_numpy(np.float64)
    if not np.isfinite(xy).all():
        raise SlideFormatError(f"spot CSV {csv_path} has missing or non-numeric coordinates in {cx}/{cy}")
    names = next((table[c].astype(str) for c in ("barcode", "barcodes", "spot") if c in table), None)
    index = pd.Index(names.to_numpy() if names is not None else [f"spot_{i}" for i in range(len(table))])
    dup = _duplicates(index)
    if dup:
        raise SlideFormatError(f"spot CSV {csv_path} has duplicate barcodes: {dup[:10]}")
    obs = pd.DataFrame(index=index)
    for col in ("array_row", "array_col"):
        if col in table:
            values = pd.to_numeric(table[col], errors="coerce").to_numpy(np.float64)
            if not np.isfinite(values).all():
                raise SlideFormatError(f"spot CSV {csv_path} has missing or non-numeric {col} values")
            obs[col] = values.astype(int)
    adata = AnnData(X=sp.csr_matrix((len(index), 0), dtype=np.float32), obs=obs)
    adata.obsm["spatial"] = xy
    _finish_obs(adata, slide_id)
    _attach_image(adata, slide_id, image_path, spot_diameter_fullres, hires_max_side, microns_per_pixel,
                  what=f"spot CSV {csv_path}")
    return adata


# ------------------------------------------------------------------------------------------- auto-detect
def _legacy_folder_files(folder: Path) -> Optional[tuple[Path, Path, Optional[Path]]]:
    """(counts, selection, image) of a legacy ST folder, or ``None`` when it has no selection file."""
    selections = sorted(folder.glob("*_selection.tsv"))
    if not selections:
        return None
    counts = sorted(p for p in folder.iterdir() if p.name.endswith((".tsv", ".tsv.gz")) and p not in selections)
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(selections) != 1 or len(counts) != 1 or len(images) > 1:
        raise SlideFormatError(
            f"legacy ST folder {folder} must hold one counts .tsv(.gz), one *_selection.tsv and at most one "
            f"image; found counts {[p.name for p in counts]}, selections {[p.name for p in selections]}, "
            f"images {[p.name for p in images]}"
        )
    return counts[0], selections[0], images[0] if images else None


def read_slide(path, **kwargs) -> AnnData:
    """Read a slide from any supported layout.

    Parameters
    ----------
    path
        - an ``.h5ad`` file → :func:`read_h5ad`;
        - a Space Ranger folder (a ``*_bc_matrix.h5`` or ``spatial/tissue_positions*.csv``) →
          :func:`read_visium`;
        - a HER2+ root (``ST-cnts/``…) with ``section=…`` in ``kwargs`` → :func:`read_her2st`;
        - a legacy ST folder (one counts ``.tsv(.gz)``, one ``*_selection.tsv``, an optional image) or a
          ``(counts, spots[, image])`` tuple → :func:`read_st_legacy`.
    **kwargs
        Passed to the chosen reader.
    """
    if isinstance(path, (tuple, list)):
        if len(path) not in (2, 3):
            raise ValueError(f"a legacy ST slide is (counts, spots[, image]); got {len(path)} paths")
        return read_st_legacy(*path, **kwargs)
    path = Path(path)
    if not path.exists():
        raise missing_file(path, "slide (.h5ad file, Space Ranger folder or legacy ST folder)")
    if path.is_file():
        if path.suffix == ".h5ad":
            return read_h5ad(path, **kwargs)
        raise SlideFormatError(f"cannot read slide file {path}: only .h5ad files are slides on their own "
                               "(other layouts are folders)")
    if any((path / m).is_file() for m in _VISIUM_MATRICES) or any(
            (path / "spatial" / p).is_file() for p in _VISIUM_POSITIONS):
        return read_visium(path, **kwargs)
    if (path / "ST-cnts").is_dir() and "section" in kwargs:
        return read_her2st(path, **kwargs)
    legacy = _legacy_folder_files(path)
    if legacy is not None:
        return read_st_legacy(*legacy, **kwargs)
    raise SlideFormatError(
        f"cannot tell the layout of {path}: looked for an .h5ad file, a Space Ranger folder "
        f"({' / '.join(_VISIUM_MATRICES)} or spatial/{' / '.join(_VISIUM_POSITIONS)}), a HER2+ root "
        "(ST-cnts/ with section=...) and a legacy ST folder (*.tsv(.gz) counts + *_selection.tsv + image)"
    )
