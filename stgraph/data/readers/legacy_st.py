"""Legacy ST readers (counts .tsv(.gz) + spot selection .tsv + H&E) and the HER2+ data set.

Every reader returns ``X`` (raw counts, CSR float32), ``obsm['spatial']`` (n, 2) spot centres as x, y in
full-resolution image pixels, ``obs['slide_id']`` (categorical) and ``uns['spatial'][slide_id]`` with
``images``, ``scalefactors`` and ``metadata`` (see ``docs/architecture.md``). Missing files raise
:class:`FileNotFoundError`; bad content raises :class:`~stgraph.data.errors.SlideFormatError`; both name
the file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from anndata import AnnData

from ..errors import SlideFormatError, missing_file, require_file
from ..image import IMAGE_SUFFIXES
from .base import _attach_image, _counts_to_csr, _duplicates, _finish_obs, _strip_suffixes, register_reader
from ...keys import Key

__all__ = ["HER2ST_IMAGED_SECTIONS", "HER2ST_SPOT_DIAMETER_PX", "ST_ARRAY_PITCH_UM", "ST_SPOT_DIAMETER_UM",
           "array_microns_per_pixel", "read_st_legacy", "read_her2st", "read_st_legacy_folder"]


#: HER2+ sections whose H&E image is available (patient B: B4; patient C: C2–C6).
HER2ST_IMAGED_SECTIONS = ("B4", "C2", "C3", "C4", "C5", "C6")


#: Spot diameter in pixels used only when the array gives no pixel size (fewer than two neighbouring spots).
HER2ST_SPOT_DIAMETER_PX = 100.0

#: Legacy ST arrays (Ståhl et al., Science 2016, "Visualization and analysis of gene expression in tissue
#: sections by spatial transcriptomics"; the 1007-spot array used by HER2+ / Andersson et al. 2021): spots of
#: 100 µm diameter, 200 µm centre to centre between neighbours of the integer (x, y) array grid.
ST_ARRAY_PITCH_UM = 200.0
ST_SPOT_DIAMETER_UM = 100.0


def array_microns_per_pixel(array_xy: np.ndarray, pixel_xy: np.ndarray,
                            pitch_um: float = ST_ARRAY_PITCH_UM) -> Optional[float]:
    """µm per image pixel from the spot array: ``pitch_um`` / the median pixel distance between spots whose
    array coordinates differ by one step along x or y (HER2+: ≈ 290 px per 200 µm → ≈ 0.69 µm/px).

    The median is robust to the jitter of detected spot centres; ``None`` when no two spots are array
    neighbours.
    """
    array_xy = np.asarray(array_xy, dtype=np.int64)
    pixel_xy = np.asarray(pixel_xy, dtype=np.float64)
    where = {(int(x), int(y)): i for i, (x, y) in enumerate(array_xy)}
    dists = []
    for i, (x, y) in enumerate(array_xy):
        for dx, dy in ((1, 0), (0, 1)):
            j = where.get((int(x) + dx, int(y) + dy))
            if j is not None:
                dists.append(float(np.hypot(*(pixel_xy[i] - pixel_xy[j]))))
    if not dists:
        return None
    step = float(np.median(dists))
    return pitch_um / step if step > 0 else None


_SELECTION_COLUMNS = ("x", "y", "pixel_x", "pixel_y", "selected")


def _header(path: Path) -> str:
    """The first line of a (possibly gzipped) text table."""
    import gzip

    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    opener = gzip.open if gz else open
    with opener(path, "rt", errors="replace") as fh:
        return fh.readline().rstrip("\r\n")


def _read_legacy_counts(path: Path) -> pd.DataFrame:
    try:
        header = _header(path)
        counts = pd.read_csv(path, sep="\t", index_col=0)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as err:
        raise SlideFormatError(f"cannot parse counts file {path} as a tab-separated table: {err}") from err
    # pandas renames repeated header names (PLEKHN1 → PLEKHN1.1): find duplicates in the header itself.
    names = pd.Index(header.split("\t")[1:])
    dup = _duplicates(names)
    if dup:
        raise SlideFormatError(f"counts file {path} has duplicate gene names: {dup[:10]}")
    counts.index = counts.index.astype(str)
    if counts.shape[1] == 0 and len(header.split()) > 1:
        raise SlideFormatError(f"counts file {path} has no tab-separated columns (0 genes); its header looks "
                               "separated by spaces or commas: legacy ST counts must be tab-separated")
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
    spot_diameter_fullres: Optional[float] = None,
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
        Spot diameter in image pixels; default 100 µm / ``microns_per_pixel`` (HER2+: ≈ 145 px).
    microns_per_pixel
        Stored as ``metadata['microns_per_pixel']``; default: from the spot array,
        :func:`array_microns_per_pixel` (200 µm between array neighbours), so runs and predictions know the
        physical scale.
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
    adata.obsm[Key.obsm.spatial] = spots[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    _finish_obs(adata, slide_id)
    if microns_per_pixel is None:
        microns_per_pixel = array_microns_per_pixel(obs[["x", "y"]].to_numpy(), adata.obsm[Key.obsm.spatial])
    if spot_diameter_fullres is None:
        spot_diameter_fullres = (ST_SPOT_DIAMETER_UM / microns_per_pixel if microns_per_pixel
                                 else HER2ST_SPOT_DIAMETER_PX)
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


@register_reader("her2st", detect=lambda path, kwargs: (path / "ST-cnts").is_dir() and "section" in kwargs)
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


@register_reader("legacy_st", detect=lambda path, kwargs: path.is_dir() and any(path.glob("*_selection.tsv")))
def read_st_legacy_folder(folder: str | os.PathLike, **kwargs) -> AnnData:
    """A legacy ST folder: one counts ``.tsv(.gz)``, one ``*_selection.tsv`` and at most one image."""
    files = _legacy_folder_files(Path(folder))
    if files is None:
        raise SlideFormatError(f"legacy ST folder {folder} has no *_selection.tsv")
    return read_st_legacy(*files, **kwargs)
