"""What every reader shares: the reader registry, checks of the stgraph convention, and helpers that attach
the image and fill ``obs`` (one place that sets ``obs['slide_id']``).

A new format is one file in this folder with one decorator::

    @register_reader("my_format", detect=lambda path, kwargs: path.suffix == ".myf")
    def read_my_format(path, **kwargs) -> AnnData: ...

and one import line in ``readers/__init__.py`` (registration order is the auto-detection order).
"""
from __future__ import annotations

import warnings

from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ...registry import Registry
from ..errors import SlideFormatError, require_file
from ..image import check_spots_on_image, image_size, thumbnail
from ..slide_id import set_slide_id
from ...keys import Key

__all__ = ["READERS", "register_reader", "validate_slide"]

#: format name → reader ``(path, **kwargs) -> AnnData``; a reader's ``detect(path, kwargs) -> bool`` (or
#: ``None``: only by name) lets :func:`~stgraph.data.readers.read_slide` pick it.
READERS: Registry[AnnData] = Registry("slide format")


def register_reader(name: str, detect: Optional[Callable[[Path, dict], bool]] = None):
    """Decorator registering a reader under ``name`` with its layout test ``detect``."""
    def decorator(fn):
        fn.detect = detect
        return READERS.register(name)(fn)

    return decorator


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
        scalefactors[Key.scalefactor.spot_diameter] = float(spot_diameter)
    if microns_per_pixel is not None:
        metadata[Key.metadata.microns_per_pixel] = float(microns_per_pixel)
    if image_path is not None:
        image_path = require_file(image_path, "image file").resolve()
        size = image_size(image_path)
        _check_inside(np.asarray(adata.obsm[Key.obsm.spatial]), size, image_path, what)
        metadata[Key.metadata.source_image_path] = str(image_path)
        metadata[Key.metadata.fullres_shape] = [size[1], size[0]]
        if hires_max_side:
            thumb = thumbnail(image_path, hires_max_side)
            images[Key.image.hires] = thumb
            scalefactors[Key.scalefactor.hires] = thumb.shape[1] / size[0]
    adata.uns[Key.uns.spatial] = {slide_id: {Key.uns.images: images, Key.uns.scalefactors: scalefactors,
                                             Key.uns.metadata: metadata}}


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
        genes = [str(g) for g in counts.columns[(values < 0).any(axis=0)][:3]]
        raise SlideFormatError(f"counts file {path} holds {n_neg} negative value(s) (gene(s) {genes}); "
                               "counts must be ≥ 0")
    warn_if_not_counts(values, f"counts file {path}")
    if values.size and not values.sum() > 0:
        raise SlideFormatError(f"counts file {path}: every count is 0 ({values.shape[0]} spots × {values.shape[1]} "
                               "genes): no expression to learn from or to score against")
    return sp.csr_matrix(values.astype(np.float32))


def warn_if_not_counts(values: np.ndarray, source: str) -> None:
    """Warn, naming ``source``, when expression values are not whole numbers: stgraph normalises and
    log1p-transforms raw counts, so already log-transformed values would be transformed twice."""
    values = np.asarray(values)
    if values.size == 0:
        return
    sample = values.ravel()[:: max(1, values.size // 1_000_000)]
    if np.any(sample != np.round(sample)):
        warnings.warn(f"{source} holds non-integer values (max {float(values.max()):.3g}): they look already "
                      "normalised or log-transformed, and stgraph will normalise and log1p-transform them again; "
                      "give raw counts (or an .h5ad with the raw counts in layers['counts'])",
                      UserWarning, stacklevel=3)


def _duplicates(index: pd.Index) -> list:
    return index[index.duplicated()].unique().tolist()


def _finish_obs(adata: AnnData, slide_id: str) -> AnnData:
    return set_slide_id(adata, slide_id)


def _check_non_negative(adata: AnnData, data: np.ndarray, source: str) -> None:
    """Raw counts are ≥ 0; name the file and a gene (a negative count ends in NaN embeddings much later)."""
    if data.size and data.min() < 0:
        x = adata.X
        col = (x.tocsc() if sp.issparse(x) else np.asarray(x)).min(axis=0)
        col = np.asarray(col.toarray() if sp.issparse(col) else col).ravel()
        genes = [str(g) for g in adata.var_names[col < 0][:3]]
        raise SlideFormatError(f"{source}: X holds negative counts (gene(s) {genes}, minimum {data.min():g}); "
                               "raw counts are ≥ 0")


def validate_slide(adata: AnnData, source: str = "slide") -> AnnData:
    """Check the stgraph convention; raise :class:`SlideFormatError` naming ``source`` on a violation.

    Checks ``obsm['spatial']`` (present, shape (n, 2), finite), unique spot names, finite non-negative
    ``X`` when it has genes, and a single ``obs['slide_id']`` (filled from ``uns['spatial']`` when absent).
    """
    if adata.n_obs == 0:
        raise SlideFormatError(f"{source} has no spots")
    if Key.obsm.spatial not in adata.obsm:
        raise SlideFormatError(f"{source} has no obsm['spatial'] (spot centres in full-resolution pixels)")
    xy = np.asarray(adata.obsm[Key.obsm.spatial])
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
        if Key.layers.counts not in adata.layers:
            _check_non_negative(adata, data, source)
            warn_if_not_counts(data, f"{source}: X")
        counts = adata.layers.get(Key.layers.counts, adata.X)
        if not (counts.sum() if sp.issparse(counts) else np.asarray(counts).sum()) > 0:
            raise SlideFormatError(f"{source}: every count is 0 ({adata.n_obs} spots × {adata.n_vars} genes): no "
                                   "expression to learn from or to score against; is it the right matrix?")
    check_spots_on_image(adata, source)
    if Key.obs.slide_id not in adata.obs:
        libs = list(adata.uns.get(Key.uns.spatial, {}))
        if len(libs) != 1:
            raise SlideFormatError(f"{source} has no obs['slide_id'] and {len(libs)} libraries in uns['spatial']; "
                                   "cannot tell its slide id")
        _finish_obs(adata, str(libs[0]))
    ids = adata.obs[Key.obs.slide_id].astype(str).unique()
    if len(ids) != 1:
        raise SlideFormatError(f"{source} mixes {len(ids)} slide ids {list(ids)[:5]}; one slide per AnnData")
    if not isinstance(adata.obs[Key.obs.slide_id].dtype, pd.CategoricalDtype):
        _finish_obs(adata, str(ids[0]))
    return adata
