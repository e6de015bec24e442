"""Reader for HEST-1k samples (Jaume et al. 2024): spot expression paired with a whole-slide image.

A HEST root folder holds, per sample id:

* ``st/<id>.h5ad`` — spots × genes raw counts, ``obsm['spatial']`` = spot centres x, y in level-0 pixels of
  the whole-slide image;
* ``wsis/<id>.tif`` — the whole-slide image as a pyramidal TIFF;
* ``metadata/<id>.json`` — e.g. ``pixel_size_um_estimated`` (µm/px), ``pixel_size_um_embedded``,
  ``spot_diameter`` (µm), ``inter_spot_dist`` (µm), ``st_technology``, ``species``, ``organ``.
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

__all__ = ["hest_paths", "read_hest"]

_WSI_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi")


def hest_paths(root: str | os.PathLike, sample_id: str) -> dict[str, Path]:
    """``{"st", "wsi", "metadata"}`` paths of a HEST sample; raises :class:`FileNotFoundError` naming the
    first one missing (and the layout expected)."""
    root = Path(root)
    if not root.is_dir():
        raise missing_file(root, "HEST data folder (with st/, wsis/, metadata/)")
    sample_id = str(sample_id)
    st = require_file(root / "st" / f"{sample_id}.h5ad", f"HEST spot data of sample {sample_id!r}")
    wsi = next((root / "wsis" / f"{sample_id}{s}" for s in _WSI_SUFFIXES
                if (root / "wsis" / f"{sample_id}{s}").is_file()), None)
    if wsi is None:
        raise missing_file(root / "wsis" / f"{sample_id}.tif", f"HEST whole-slide image of sample {sample_id!r}")
    meta = require_file(root / "metadata" / f"{sample_id}.json", f"HEST metadata of sample {sample_id!r}")
    return {"st": st, "wsi": wsi, "metadata": meta}


def _positive(meta: dict, key: str, path: Path) -> Optional[float]:
    value = meta.get(key)
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise SlideFormatError(f"HEST metadata {path}: {key} = {meta[key]!r} is not a number") from None
    if not (np.isfinite(value) and value > 0):
        raise SlideFormatError(f"HEST metadata {path}: {key} = {value} must be positive")
    return value


def _counts(x, path: Path) -> sp.csr_matrix:
    x = sp.csr_matrix(x, dtype=np.float32)
    if not np.isfinite(x.data).all():
        raise SlideFormatError(f"HEST spot data {path}: X holds NaN or infinite values; raw counts expected")
    if (x.data < 0).any():
        raise SlideFormatError(f"HEST spot data {path}: X holds negative values; raw counts expected")
    return x


@register_reader("hest", detect=lambda path, kwargs: (path / "st").is_dir() and (path / "wsis").is_dir()
                 and "sample_id" in kwargs)
def read_hest(root: str | os.PathLike, sample_id: str, mpp: Optional[float] = None,
              hires_max_side: Optional[int] = 2000) -> AnnData:
    """Read one HEST-1k sample into the stgraph slide convention.

    Parameters
    ----------
    root
        The HEST folder (``st/``, ``wsis/``, ``metadata/``).
    sample_id
        E.g. ``"TENX95"``; also the slide id.
    mpp
        µm per level-0 pixel; default ``pixel_size_um_estimated`` from the metadata, else
        ``pixel_size_um_embedded``, else the WSI's own metadata.
    hires_max_side
        Longest side of the thumbnail stored as ``images['hires']``, px (``None``: no thumbnail).

    Returns
    -------
    AnnData
        ``X`` raw counts (CSR float32); ``obs`` as in the file plus ``slide_id`` (categorical), with
        ``array_row``/``array_col`` as int64 when present; ``obsm['spatial']`` (n, 2) float64 x, y level-0 px;
        ``uns['spatial'][sample_id]``: ``images['hires']`` (h, w, 3) uint8, ``scalefactors``
        {``tissue_hires_scalef`` = thumbnail width / WSI width, ``spot_diameter_fullres`` = spot_diameter /
        mpp (px)}, ``metadata`` {``microns_per_pixel``, ``source_image`` (the WSI path; also
        ``source_image_path`` for TIFFs), ``st_technology``, ``spot_diameter_um``, ``inter_spot_dist_um``,
        ``fullres_shape`` [H, W]}.
    """
    import anndata

    from ..wsi import WSIImage

    sample_id = str(sample_id)
    paths = hest_paths(root, sample_id)
    try:
        meta = json.loads(paths["metadata"].read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SlideFormatError(f"cannot parse HEST metadata {paths['metadata']}: {err}") from err
    if not isinstance(meta, dict):
        raise SlideFormatError(f"HEST metadata {paths['metadata']} should be a JSON object, got {type(meta).__name__}")
    try:
        st = anndata.read_h5ad(paths["st"])
    except Exception as err:  # h5py/anndata raise OSError, KeyError, …
        raise SlideFormatError(f"cannot read HEST spot data {paths['st']}: {err}") from err
    if "spatial" not in st.obsm:
        raise SlideFormatError(f"HEST spot data {paths['st']} has no obsm['spatial'] (spot centres in WSI pixels)")
    xy = np.asarray(st.obsm[Key.obsm.spatial], dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2 or not np.isfinite(xy).all():
        raise SlideFormatError(f"HEST spot data {paths['st']}: obsm['spatial'] must be finite (n, 2) x, y; "
                               f"got shape {xy.shape}")
    if st.n_obs == 0:
        raise SlideFormatError(f"HEST spot data {paths['st']} has no spots")

    if mpp is None:
        mpp = (_positive(meta, "pixel_size_um_estimated", paths["metadata"])
               or _positive(meta, "pixel_size_um_embedded", paths["metadata"]))
    with WSIImage(paths["wsi"], mpp=mpp) as wsi:
        height, width = wsi.shape[:2]
        outside = (xy[:, 0] < 0) | (xy[:, 0] >= width) | (xy[:, 1] < 0) | (xy[:, 1] >= height)
        if outside.any():
            raise SlideFormatError(f"{int(outside.sum())} spot(s) of {paths['st']} lie outside the whole-slide "
                                   f"image {paths['wsi']} ({width} × {height} px); e.g. {xy[outside][:3].tolist()}")
        thumb = wsi.thumbnail(hires_max_side) if hires_max_side else None
        mpp = float(wsi.mpp)

    obs = st.obs.copy()
    for col in ("array_row", "array_col", "in_tissue"):
        if col in obs:
            obs[col] = pd.to_numeric(obs[col], errors="raise").astype(np.int64)
    obs["slide_id"] = pd.Categorical([sample_id] * st.n_obs, categories=[sample_id])
    obs.index = obs.index.astype(str)
    if obs.index.duplicated().any():
        raise SlideFormatError(f"HEST spot data {paths['st']} has duplicate spot names, "
                               f"e.g. {obs.index[obs.index.duplicated()][:3].tolist()}")
    var = st.var.copy()
    var.index = var.index.astype(str)
    adata = AnnData(X=_counts(st.X, paths["st"]), obs=obs, var=var)
    adata.var_names_make_unique()
    adata.obsm[Key.obsm.spatial] = xy

    spot_um = _positive(meta, "spot_diameter", paths["metadata"])
    images, scalefactors = {}, {}
    if thumb is not None:
        images["hires"] = thumb
        scalefactors["tissue_hires_scalef"] = thumb.shape[1] / float(width)
    if spot_um is not None:
        scalefactors["spot_diameter_fullres"] = spot_um / mpp
    source = str(paths["wsi"].resolve())
    metadata = {"microns_per_pixel": mpp, "source_image": source, "fullres_shape": [int(height), int(width)]}
    if paths["wsi"].suffix.lower() in (".tif", ".tiff"):
        metadata["source_image_path"] = source  # lets stgraph.data.patches open level 0 directly
    for key, name in (("st_technology", "st_technology"), ("spot_diameter", "spot_diameter_um"),
                      ("inter_spot_dist", "inter_spot_dist_um"), ("species", "species"), ("organ", "organ")):
        if meta.get(key) is not None:
            metadata[name] = meta[key]
    adata.uns[Key.uns.spatial] = {sample_id: {
        Key.uns.images: images, Key.uns.scalefactors: scalefactors, Key.uns.metadata: metadata}}
    return adata
