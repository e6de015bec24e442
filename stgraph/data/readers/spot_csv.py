"""An H&E image plus a CSV of spot centres, without expression (a slide to predict from its image alone)."""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ..errors import SlideFormatError, require_file
from .base import _attach_image, _duplicates, _finish_obs, register_reader
from ...keys import Key

__all__ = ["read_spot_csv"]


@register_reader("spot_csv")  # two files: only by name, never auto-detected
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
    adata.obsm[Key.obsm.spatial] = xy
    _finish_obs(adata, slide_id)
    _attach_image(adata, slide_id, image_path, spot_diameter_fullres, hires_max_side, microns_per_pixel,
                  what=f"spot CSV {csv_path}")
    return adata
