"""10x Visium (Space Ranger output folder) → AnnData in the stgraph convention."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ..errors import SlideFormatError, missing_file, require_file
from ..image import image_size, open_image
from .base import _check_inside, _duplicates, _finish_obs, register_reader
from ...keys import Key

__all__ = ["read_visium", "is_visium"]


def is_visium(path: Path, kwargs: Optional[dict] = None) -> bool:
    """True when ``path`` is a Space Ranger output folder (a count matrix or ``spatial/`` positions file)."""
    return path.is_dir() and (any((path / m).is_file() for m in _VISIUM_MATRICES) or any(
        (path / "spatial" / p).is_file() for p in _VISIUM_POSITIONS))


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
        adata = adata[adata.obs[Key.obs.filtered_barcodes].astype(bool).to_numpy()].copy()
        del adata.obs[Key.obs.filtered_barcodes]
    if "filtered_probes" in adata.var and "gene_ids" in adata.var:
        adata = _probes_to_genes(adata)
    adata.var_names_make_unique()
    return adata


def _probes_to_genes(adata: AnnData) -> AnnData:
    """Sum the filtered probes of each gene (what Space Ranger writes to the filtered matrix)."""
    probes = adata[:, adata.var[Key.var.filtered_probes].astype(bool).to_numpy()]
    gene_ids = probes.var[Key.var.gene_ids].astype(str).to_numpy()
    genes, inverse = np.unique(gene_ids, return_inverse=True)
    first = pd.Series(np.arange(len(gene_ids))).groupby(inverse).first().to_numpy()
    indicator = sp.csr_matrix((np.ones(len(gene_ids), np.float32), (np.arange(len(gene_ids)), inverse)),
                              shape=(len(gene_ids), len(genes)))
    x = sp.csr_matrix(probes.X @ indicator, dtype=np.float32)
    name_col = "gene_name" if "gene_name" in probes.var else "gene_ids"
    var = pd.DataFrame({"gene_ids": genes}, index=probes.var[name_col].astype(str).to_numpy()[first])
    return AnnData(X=x, obs=probes.obs.copy(), var=var)


def join_positions(adata: AnnData, positions: pd.DataFrame, matrix_path, positions_path, unit: str):
    """The barcodes of a Space Ranger matrix joined to their positions (Visium spots, Visium HD bins), kept
    where ``in_tissue`` is 1: ``(adata view, positions)`` in the matrix's order. A barcode without a position,
    or no unit in tissue, is a :class:`SlideFormatError` naming both files."""
    unknown = adata.obs_names[~adata.obs_names.isin(positions.index)]
    if len(unknown):
        raise SlideFormatError(f"{len(unknown)} barcode(s) of {matrix_path} are missing from the {unit} positions "
                               f"in {positions_path}, e.g. {unknown[:3].tolist()}")
    pos = positions.loc[adata.obs_names]
    keep = pos["in_tissue"].to_numpy() == 1
    adata, pos = adata[keep], pos.loc[keep]
    if adata.n_obs == 0:
        raise SlideFormatError(f"no {unit} of {matrix_path} is marked in_tissue in {positions_path}")
    return adata, pos


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


#: Diameter of a Visium spot, µm (the pixel size of a Space Ranger folder follows from it).
VISIUM_SPOT_DIAMETER_UM = 55.0


@register_reader("visium", detect=is_visium)
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
    microns_per_pixel
        Full-resolution pixel size; default: ``scalefactors['microns_per_pixel']`` when Space Ranger wrote it,
        else 55 µm / ``spot_diameter_fullres`` (Visium spots are 55 µm across).
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
            f"Space Ranger folder {folder} has no spot positions: {looked} not found. Training and prediction "
            "need them (and the H&E): copy Space Ranger's spatial/ folder (tissue_positions*.csv, "
            "scalefactors_json.json, tissue_hires_image.png) into the folder; in Python, "
            "read_visium(path, require_spatial=False) reads the count matrix alone")
    if matrix_path.name != _VISIUM_MATRICES[0]:
        warnings.warn(f"{folder} has no {_VISIUM_MATRICES[0]}; reading {matrix_path.name} and keeping the "
                      "spots Space Ranger called as tissue", UserWarning, stacklevel=2)
    adata = _read_10x_matrix(matrix_path)
    library_id = str(library_id) if library_id is not None else _default_library_id(folder)
    if positions_path is None:
        warnings.warn(f"no spot positions ({looked}); returning expression without obsm['spatial']",
                      UserWarning, stacklevel=2)
        adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
        adata.uns[Key.uns.spatial] = {library_id: {Key.uns.images: {}, Key.uns.scalefactors: {},
                                             Key.uns.metadata: {"source_matrix": str(matrix_path.resolve())}}}
        return _finish_obs(adata, library_id)

    adata, pos = join_positions(adata, _read_positions(positions_path), matrix_path, positions_path, "spot")
    adata = adata.copy()
    for col in ("in_tissue", "array_row", "array_col"):
        adata.obs[col] = pos[col].astype(int).to_numpy()
    adata.obsm[Key.obsm.spatial] = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64)
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
    if microns_per_pixel is None and scalefactors.get("microns_per_pixel"):
        microns_per_pixel = scalefactors["microns_per_pixel"]  # Space Ranger ≥ 3 / Visium HD states it
    elif microns_per_pixel is None and scalefactors.get(Key.scalefactor.spot_diameter, 0) > 0:
        # Visium spots are 55 µm across: the full-resolution pixel size follows from their diameter in px.
        microns_per_pixel = VISIUM_SPOT_DIAMETER_UM / scalefactors[Key.scalefactor.spot_diameter]
    if microns_per_pixel is not None:
        metadata[Key.metadata.microns_per_pixel] = float(microns_per_pixel)
    if fullres_image is not None:
        fullres_image = require_file(fullres_image, "full-resolution image").resolve()
        size = image_size(fullres_image)
        _check_inside(adata.obsm[Key.obsm.spatial], size, fullres_image, what=f"{positions_path}")
        metadata[Key.metadata.source_image_path] = str(fullres_image)
        metadata[Key.metadata.fullres_shape] = [size[1], size[0]]
    adata.uns[Key.uns.spatial] = {library_id: {Key.uns.images: images, Key.uns.scalefactors: scalefactors, Key.uns.metadata: metadata}}
    return adata


def _default_library_id(folder: Path) -> str:
    """The folder name, or its parent's for Space Ranger's generic ``outs`` folder.

    (The ``library_ids`` stored in the matrix are often generic, e.g. ``custom``, and would collide.)
    """
    folder = folder.resolve()
    return folder.parent.name if folder.name == "outs" else folder.name
