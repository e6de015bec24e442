"""The one rule for a slide's id: ``obs['slide_id']`` (a single value), else the single library id in
``uns['spatial']``, else the caller's ``default``; otherwise an error naming what is missing."""
from __future__ import annotations

from typing import Optional

import pandas as pd
from anndata import AnnData

from ..keys import Key

__all__ = ["slide_id_of", "set_slide_id"]


def slide_id_of(adata: AnnData, default: Optional[str] = None) -> str:
    """The slide id of a one-slide AnnData (see the module docstring)."""
    if Key.obs.slide_id in adata.obs and adata.n_obs:
        ids = adata.obs[Key.obs.slide_id].astype(str).unique()
        if len(ids) != 1:
            raise ValueError(f"an AnnData holds {len(ids)} slides {list(ids)[:5]}; one slide per AnnData")
        return str(ids[0])
    libs = list(adata.uns.get(Key.uns.spatial, {}))
    if len(libs) == 1:
        return str(libs[0])
    if default is not None:
        return default
    raise ValueError("cannot tell the slide id: no obs['slide_id'] and not exactly one library in uns['spatial']")


def set_slide_id(adata: AnnData, slide_id: str) -> AnnData:
    """Write ``obs['slide_id']`` as a one-category categorical (in place), and rename the slide's single
    ``uns['spatial']`` library to it (the convention: the slide id is the library id); returns ``adata``."""
    slide_id = str(slide_id)
    adata.obs[Key.obs.slide_id] = pd.Categorical([slide_id] * adata.n_obs, categories=[slide_id])
    spatial = adata.uns.get(Key.uns.spatial)
    if isinstance(spatial, dict) and len(spatial) == 1 and slide_id not in spatial:
        adata.uns[Key.uns.spatial] = {slide_id: next(iter(spatial.values()))}
    return adata
