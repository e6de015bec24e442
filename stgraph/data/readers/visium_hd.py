"""Reader for 10x Visium HD binned outputs, with optional pooling of square bins into larger pseudo-spots.

Space Ranger HD writes, under ``outs/binned_outputs/square_{002,008,016}um/``:

* ``filtered_feature_bc_matrix.h5`` — bins × genes counts (10x HDF5), barcodes ``s_008um_00301_00182-1``;
* ``spatial/tissue_positions.parquet`` — ``barcode, in_tissue, array_row, array_col, pxl_row_in_fullres,
  pxl_col_in_fullres`` (a ``.csv`` of the same columns is accepted too, e.g. when pyarrow is absent);
* ``spatial/scalefactors_json.json`` — ``microns_per_pixel``, ``bin_size_um``, ``spot_diameter_fullres``,
  ``tissue_hires_scalef``, ``tissue_lowres_scalef``, …;
* ``spatial/tissue_hires_image.png`` / ``tissue_lowres_image.png``.

Bins are squares on a regular array: bin (array_row, array_col) covers bin_size_um × bin_size_um. Pooling
to ``pool_um`` (a multiple k of the bin size) sums the counts of the k × k bins of each block
(array_row // k, array_col // k) — e.g. 8 µm bins pooled to 56 µm approximate Visium-sized spots.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ...keys import Key
from .base import register_reader
from ..errors import SlideFormatError, missing_file, require_file

__all__ = ["read_visium_hd", "pool_bins", "read_hd_positions"]

_POSITION_COLUMNS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]


def _bin_folder(path: Path, bin_size_um: int) -> Path:
    """The ``square_XXXum`` folder for ``path`` = it, ``binned_outputs/`` or the ``outs/`` folder above."""
    if not path.is_dir():
        raise missing_file(path, "Visium HD output folder (outs/, binned_outputs/ or square_XXXum/)")
    if (path / "filtered_feature_bc_matrix.h5").is_file() or (path / "spatial").is_dir():
        return path
    for base in (path / "binned_outputs", path):
        folder = base / f"square_{int(bin_size_um):03d}um"
        if folder.is_dir():
            return folder
    found = sorted(p.name for b in (path / "binned_outputs", path) if b.is_dir() for p in b.glob("square_*um"))
    return_path = path / "binned_outputs" / f"square_{int(bin_size_um):03d}um"
    raise FileNotFoundError(f"Visium HD {bin_size_um} µm bin folder not found: {return_path} "
                            f"(bin folders present: {found or 'none'})")


def read_hd_positions(spatial_dir: Path) -> pd.DataFrame:
    """Bin positions indexed by barcode, from ``tissue_positions.parquet`` (or ``tissue_positions.csv``).

    Raises :class:`SlideFormatError` naming the file when columns are missing, and when only the parquet
    file exists but pandas has no parquet engine (suggesting ``pip install pyarrow``).
    """
    parquet, csv = spatial_dir / "tissue_positions.parquet", spatial_dir / "tissue_positions.csv"
    if parquet.is_file():
        try:
            pos = pd.read_parquet(parquet)
            path = parquet
        except ImportError as err:
            if not csv.is_file():
                raise SlideFormatError(
                    f"cannot read {parquet}: pandas has no parquet engine ({str(err).splitlines()[0]}); "
                    "install one with "
                    "`pip install pyarrow`, or convert the file to tissue_positions.csv") from err
            pos, path = None, csv
        except Exception as err:  # pyarrow raises ArrowInvalid etc. on a corrupt file
            raise SlideFormatError(f"cannot read bin positions {parquet}: {err}") from err
    elif csv.is_file():
        pos, path = None, csv
    else:
        raise missing_file(parquet, f"Visium HD bin positions (or {csv.name})")
    if pos is None:
        try:
            pos = pd.read_csv(csv)
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
            raise SlideFormatError(f"cannot parse bin positions {csv}: {err}") from err
    missing = [c for c in _POSITION_COLUMNS if c not in pos.columns]
    if missing:
        raise SlideFormatError(f"bin positions {path} lack column(s) {missing} (found {list(pos.columns)})")
    pos = pos.set_index("barcode")
    pos.index = pos.index.astype(str)
    if pos.index.duplicated().any():
        raise SlideFormatError(f"bin positions {path} have duplicate barcodes, "
                               f"e.g. {pos.index[pos.index.duplicated()][:3].tolist()}")
    return pos


def pool_bins(x: sp.spmatrix, array_row: np.ndarray, array_col: np.ndarray, factor: int,
              chunk_size: int = 200_000) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray, np.ndarray]:
    """Sum the counts of each ``factor`` × ``factor`` block of bins.

    Parameters
    ----------
    x
        (n_bins, n_genes) counts.
    array_row, array_col
        (n_bins,) integer bin coordinates.
    factor
        Bins per block side (pool_um / bin_size_um).
    chunk_size
        Bins aggregated at a time: bins are ordered by block, and each chunk (extended to a block boundary)
        is summed with its own sparse aggregation matrix, so memory is one chunk of ``x`` plus the result.

    Returns
    -------
    (pooled, block_row, block_col, members)
        ``pooled`` (n_blocks, n_genes) CSR float32 = A · x with A[b, i] = 1 when bin i lies in block b;
        ``block_row``, ``block_col`` (n_blocks,) = (array_row // factor, array_col // factor) in row-major
        order; ``members`` (n_bins,) the block index of each bin.
    """
    x = sp.csr_matrix(x)
    rows, cols = np.asarray(array_row, np.int64), np.asarray(array_col, np.int64)
    if factor < 1:
        raise ValueError(f"pooling factor must be ≥ 1, got {factor}")
    brow, bcol = rows // factor, cols // factor
    keys = brow * (int(bcol.max(initial=0)) + 1) + bcol
    uniq, members = np.unique(keys, return_inverse=True)
    members = members.ravel()
    n_blocks = len(uniq)
    order = np.argsort(members, kind="stable")
    sorted_members = members[order]
    parts, start = [], 0
    n = len(order)
    while start < n:
        stop = min(n, start + chunk_size)
        if stop < n:  # extend to the end of the block so each block is summed within one chunk
            stop = int(np.searchsorted(sorted_members, sorted_members[stop - 1], side="right"))
        idx = order[start:stop]
        first = int(sorted_members[start])
        local = sorted_members[start:stop] - first
        n_local = int(local[-1]) + 1
        agg = sp.csr_matrix((np.ones(len(idx), np.float32), (local, np.arange(len(idx)))),
                            shape=(n_local, len(idx)))
        parts.append(sp.csr_matrix(agg @ x[idx], dtype=np.float32))
        start = stop
    pooled = sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, x.shape[1]), dtype=np.float32)
    # The first bin of each block (in block order) gives the block's coordinates.
    first_of = order[np.searchsorted(sorted_members, np.arange(n_blocks))]
    return pooled, brow[first_of], bcol[first_of], members


@register_reader("visium_hd", detect=lambda path, kwargs: (path / "binned_outputs").is_dir()
                 or (path.name.startswith("square_") and (path / "spatial").is_dir()))
def read_visium_hd(path: str | os.PathLike, bin_size_um: int = 8, pool_um: Optional[float] = None,
                   library_id: Optional[str] = None, load_images: bool = True,
                   fullres_image: Optional[str | os.PathLike] = None, chunk_size: int = 200_000) -> AnnData:
    """Read a Visium HD binned output, optionally pooled into larger square pseudo-spots.

    Parameters
    ----------
    path
        The Space Ranger ``outs/`` folder, its ``binned_outputs/`` or a ``square_XXXum/`` folder.
    bin_size_um
        Which binning to read (2, 8 or 16 µm) when ``path`` is above the ``square_XXXum`` folders.
    pool_um
        Pool bins into squares of this side, µm (a multiple of the bin size; see :func:`pool_bins`).
    library_id
        Slide id; default: the name of the folder holding ``outs``/``binned_outputs`` (else the folder).
    load_images
        Store ``tissue_hires_image.png`` / ``tissue_lowres_image.png`` as ``images['hires'/'lowres']``.
    fullres_image
        The full-resolution (microscope) image, stored as ``metadata['source_image']`` (and
        ``source_image_path``) for patch extraction.

    Returns
    -------
    AnnData
        ``X`` raw counts (CSR float32) of in-tissue bins (or pools); ``obsm['spatial']`` x, y full-res px
        (``pxl_col_in_fullres``, ``pxl_row_in_fullres``; for pools, the mean of their bins); ``obs``:
        ``in_tissue``, ``array_row``, ``array_col`` (pool coordinates when pooled), ``n_bins`` (bins per pool,
        pooled only), ``slide_id``; ``uns['spatial'][library_id]``: ``images``, ``scalefactors`` (from the
        JSON; ``spot_diameter_fullres`` becomes pool_um / microns_per_pixel when pooled), ``metadata``
        {``microns_per_pixel``, ``bin_size_um``, ``pool_um``, ``source_matrix``}.
    """
    from .visium import _read_10x_matrix, join_positions

    root = Path(path)
    folder = _bin_folder(root, bin_size_um)
    matrix_path = require_file(folder / "filtered_feature_bc_matrix.h5", "Visium HD count matrix")
    spatial_dir = folder / "spatial"
    positions = read_hd_positions(spatial_dir)
    sf_path = require_file(spatial_dir / "scalefactors_json.json", "Visium HD scale factors")
    try:
        scalefactors = {k: float(v) for k, v in json.loads(sf_path.read_text()).items()
                        if isinstance(v, (int, float))}
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SlideFormatError(f"cannot parse scale factors {sf_path}: {err}") from err
    mpp = scalefactors.get("microns_per_pixel")
    bin_um = scalefactors.get("bin_size_um", float(bin_size_um))

    adata, pos = join_positions(_read_10x_matrix(matrix_path), positions, matrix_path, spatial_dir, "bin")
    x = sp.csr_matrix(adata.X, dtype=np.float32)
    xy = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(np.float64)
    rows, cols = pos["array_row"].to_numpy(np.int64), pos["array_col"].to_numpy(np.int64)

    if library_id is None:
        here = root.resolve()
        while here.name in ("outs", "binned_outputs") or here.name.startswith("square_"):
            here = here.parent
        library_id = here.name
    library_id = str(library_id)

    if pool_um is not None:
        factor = pool_um / bin_um
        if factor < 1 or abs(factor - round(factor)) > 1e-6:
            raise ValueError(f"pool_um ({pool_um}) must be a whole multiple of the bin size ({bin_um:g} µm)")
        factor = int(round(factor))
        x, brow, bcol, members = pool_bins(x, rows, cols, factor, chunk_size=chunk_size)
        counts = np.bincount(members, minlength=x.shape[0])
        centre = np.column_stack([np.bincount(members, xy[:, 0], minlength=x.shape[0]),
                                  np.bincount(members, xy[:, 1], minlength=x.shape[0])]) / counts[:, None]
        obs = pd.DataFrame({"in_tissue": np.ones(x.shape[0], np.int64), "array_row": brow, "array_col": bcol,
                            "n_bins": counts.astype(np.int64)},
                           index=[f"p{pool_um:g}um_{r:05d}_{c:05d}" for r, c in zip(brow, bcol)])
        xy = centre
        if mpp:
            scalefactors["spot_diameter_fullres"] = float(pool_um) / mpp
    else:
        obs = pd.DataFrame({"in_tissue": np.ones(len(rows), np.int64), "array_row": rows, "array_col": cols},
                           index=adata.obs_names.astype(str))
    obs["slide_id"] = pd.Categorical([library_id] * len(obs), categories=[library_id])
    out = AnnData(X=x, obs=obs, var=adata.var.copy())
    out.obsm[Key.obsm.spatial] = np.asarray(xy, dtype=np.float64)

    images = {}
    if load_images:
        from PIL import Image

        for res in ("hires", "lowres"):
            png = spatial_dir / f"tissue_{res}_image.png"
            if png.is_file():
                try:
                    with Image.open(png) as img:
                        images[res] = np.asarray(img.convert("RGB"), dtype=np.uint8)
                except OSError as err:
                    raise SlideFormatError(f"cannot read image {png}: {err}") from err
    metadata = {"source_matrix": str(matrix_path.resolve()), "bin_size_um": float(bin_um)}
    if mpp:
        metadata["microns_per_pixel"] = float(mpp)
    if pool_um is not None:
        metadata["pool_um"] = float(pool_um)
    if fullres_image is not None:
        source = str(require_file(fullres_image, "full-resolution image").resolve())
        metadata["source_image"] = source
        metadata["source_image_path"] = source
    out.uns[Key.uns.spatial] = {library_id: {
        Key.uns.images: images, Key.uns.scalefactors: scalefactors, Key.uns.metadata: metadata}}
    return out
