"""AnnData files (``.h5ad``) already in the stgraph convention, checked on read."""
from __future__ import annotations

import os

from anndata import AnnData

from ..errors import SlideFormatError, require_file
from .base import register_reader, validate_slide

__all__ = ["read_h5ad"]


@register_reader("h5ad", detect=lambda path, kwargs: path.is_file() and path.suffix == ".h5ad")
def read_h5ad(path: str | os.PathLike) -> AnnData:
    """Read an ``.h5ad`` slide and check the stgraph convention (see :func:`validate_slide`)."""
    import anndata

    path = require_file(path, "AnnData file (.h5ad)")
    try:
        adata = anndata.read_h5ad(path)
    except (OSError, KeyError, ValueError) as err:
        raise SlideFormatError(f"cannot read {path} as an .h5ad file: {err}") from err
    return validate_slide(adata, source=str(path))
