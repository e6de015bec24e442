"""Readers: slides on disk → one :class:`~anndata.AnnData` per slide in the stgraph convention.

Every reader returns ``X`` (raw counts, CSR float32), ``obsm['spatial']`` (n, 2) spot centres as x, y in
full-resolution image pixels, ``obs['slide_id']`` (categorical) and ``uns['spatial'][slide_id]`` with
``images``, ``scalefactors`` and ``metadata`` (see ``docs/architecture.md``). Missing files raise
:class:`FileNotFoundError`; bad content raises :class:`~stgraph.data.errors.SlideFormatError`; both name
the file.

One file per format, each registered in :data:`READERS` with ``@register_reader(name, detect=...)``;
:func:`read_slide` asks the registry which format a path holds.
"""
from __future__ import annotations

import re

from pathlib import Path
from typing import Optional

from anndata import AnnData

from ..errors import SlideFormatError, missing_file
from ..image import IMAGE_SUFFIXES, image_size, open_image
from .base import READERS, register_reader, validate_slide
# Registration order is the auto-detection order.
from .h5ad import read_h5ad
from .visium import _VISIUM_MATRICES, _VISIUM_POSITIONS, read_visium
from .legacy_st import (HER2ST_IMAGED_SECTIONS, HER2ST_SPOT_DIAMETER_PX, read_her2st, read_st_legacy,
                        read_st_legacy_folder)
from .spot_csv import read_spot_csv
from .hest import read_hest
from .visium_hd import read_visium_hd
from .spatialdata import read_spatialdata
from .sample_sheet import SampleSheetError, parse_sample_sheet

__all__ = [
    "READERS",
    "register_reader",
    "HER2ST_IMAGED_SECTIONS",
    "HER2ST_SPOT_DIAMETER_PX",
    "IMAGE_SUFFIXES",
    "read_st_legacy",
    "SampleSheetError",
    "parse_sample_sheet",
    "read_st_legacy_folder",
    "read_her2st",
    "read_visium",
    "read_h5ad",
    "read_spot_csv",
    "read_hest",
    "read_visium_hd",
    "read_spatialdata",
    "read_slide",
    "validate_slide",
    "image_size",
    "open_image",
]


def read_slide(path, format: Optional[str] = None, **kwargs) -> AnnData:
    """Read a slide from any registered layout.

    Parameters
    ----------
    path
        - an ``.h5ad`` file → :func:`read_h5ad`;
        - a Space Ranger folder (a ``*_bc_matrix.h5`` or ``spatial/tissue_positions*.csv``) →
          :func:`read_visium`;
        - a SpatialData store (a ``.zarr`` folder with ``tables``/``images``/``shapes``) →
          :func:`read_spatialdata` (``table=``, ``image=``, ... in ``kwargs``);
        - a HER2+ root (``ST-cnts/``…) with ``section=…`` in ``kwargs`` → :func:`read_her2st`;
        - a legacy ST folder (one counts ``.tsv(.gz)``, one ``*_selection.tsv``, an optional image) or a
          ``(counts, spots[, image])`` tuple → :func:`read_st_legacy`.
    format
        A name in :data:`READERS` to skip auto-detection (an unknown name fails with the valid choices).
    **kwargs
        Passed to the chosen reader, except ``pseudospot_um``: the units read (cells, bins, spots) are pooled
        into square pseudo-spots of exactly that many µm (:func:`stgraph.data.pp.pool_pseudospots`).
    """
    pseudospot_um = kwargs.pop("pseudospot_um", None)
    if pseudospot_um is not None:
        from ..pp import pool_pseudospots

        try:
            size = float(pseudospot_um)
        except (TypeError, ValueError):
            raise SlideFormatError(f"{path}: pseudospot_um must be a number of µm, got {pseudospot_um!r}") from None
        return pool_pseudospots(read_slide(path, format=format, **kwargs), size)
    if format is not None:
        return _call(READERS.get(format), format, path, kwargs)
    if isinstance(path, (tuple, list)):
        if len(path) not in (2, 3):
            raise ValueError(f"a legacy ST slide is (counts, spots[, image]); got {len(path)} paths")
        return read_st_legacy(*path, **kwargs)
    path = Path(path)
    if not path.exists():
        raise missing_file(path, "slide (.h5ad file, Space Ranger folder, SpatialData .zarr store or legacy ST folder)")
    for name, reader in READERS.items():
        detect = getattr(reader, "detect", None)
        if detect is not None and detect(path, kwargs):
            return _call(reader, name, path, kwargs)
    if path.is_file():
        raise SlideFormatError(f"cannot read slide file {path}: only .h5ad files are slides on their own "
                               "(other layouts are folders)")
    raise SlideFormatError(
        f"cannot tell the layout of {path}: looked for an .h5ad file, a Space Ranger folder "
        f"({' / '.join(_VISIUM_MATRICES)} or spatial/{' / '.join(_VISIUM_POSITIONS)}), a HER2+ root "
        "(ST-cnts/ with section=...), a SpatialData .zarr store (zarr.json + tables/ or images/) and a legacy ST "
        "folder (*.tsv(.gz) counts + *_selection.tsv + image)"
    )


def _call(reader, name: str, path, kwargs: dict):
    """``reader(path, **kwargs)``, an option the reader does not take refused by name with the ones it does
    (before a file is opened: ``--read KEY=VALUE`` on the command line lands here)."""
    import inspect

    params = list(inspect.signature(reader).parameters.values())[1:]
    if kwargs and not any(p.kind == p.VAR_KEYWORD for p in params):
        accepted = [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
        unknown = [k for k in kwargs if k not in accepted]
        if unknown:
            raise SlideFormatError(f"{path}: the {name!r} reader takes no option {unknown[0]!r}; its options: "
                                   f"{', '.join(accepted) or 'none'}")
        by_name = {p.name: p for p in params}
        kwargs = {k: _typed(v, by_name[k], path) if isinstance(v, str) else v for k, v in kwargs.items()}
    return reader(path, **kwargs)


def _typed(value: str, param, path):
    """A command-line option's text as the type the reader's parameter takes (its default's type, else its
    annotation: bool, int or float); text for text and paths."""
    import inspect

    default = param.default
    kind = type(default) if isinstance(default, (bool, int, float)) else None
    if kind is None and param.annotation is not inspect.Parameter.empty:
        words = set(re.findall(r"[A-Za-z]+", str(param.annotation)))
        if not words & {"str", "PathLike", "Path"}:
            kind = next((t for t in (bool, int, float) if t.__name__ in words), None)
    if kind is None:
        return value
    try:
        if kind is bool:
            text = value.strip().lower()
            if text not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return text in ("true", "1", "yes")
        return kind(value)
    except ValueError:
        raise SlideFormatError(f"{path}: option {param.name}={value!r} must be a {kind.__name__}") from None
