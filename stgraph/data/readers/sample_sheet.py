"""A sample sheet: one CSV row per slide, checked whole before any slide is read (the CLI's ``--samples``
reads its rows with :func:`~stgraph.data.read_slide` / :func:`read_st_legacy`).

Two layouts (columns, in any order; extra columns are ignored):

* ``sample_id, counts, spots, image`` — legacy ST sections from their three files (counts ``.tsv(.gz)``,
  spot selection ``.tsv``, H&E image), as the HER2+ data set has them;
* ``sample_id, path`` — any slide :func:`~stgraph.data.read_slide` reads (``.h5ad``, Space Ranger folder,
  legacy ST folder).

Relative paths are taken from the sheet's folder. Every problem (missing column, empty cell, duplicate
``sample_id``, missing file) raises :class:`SampleSheetError` naming the sheet, the row and the column.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..errors import SlideFormatError

__all__ = ["SampleSheetError", "LEGACY_COLUMNS", "PATH_COLUMNS", "parse_sample_sheet"]

LEGACY_COLUMNS = ("sample_id", "counts", "spots", "image")
PATH_COLUMNS = ("sample_id", "path")


class SampleSheetError(SlideFormatError):
    """A sample sheet whose columns, cells or files are not usable."""


def parse_sample_sheet(sheet: str | os.PathLike) -> list[dict]:
    """Check a sample sheet and return its rows, without reading any slide.

    Returns
    -------
    list of dict
        One per row: ``{"sample_id": str, "counts": Path, "spots": Path, "image": Path}`` (legacy layout) or
        ``{"sample_id": str, "path": Path}``, paths resolved against the sheet's folder.
    """
    sheet = Path(sheet)
    if not sheet.is_file():
        raise SampleSheetError(f"sample sheet not found: {sheet}")
    try:
        df = pd.read_csv(sheet, sep=None, engine="python", dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas' parser errors vary by version
        raise SampleSheetError(f"{sheet}: not a readable CSV ({exc})") from exc
    df.columns = [str(c).strip() for c in df.columns]
    cols = set(df.columns)
    if set(LEGACY_COLUMNS) <= cols:
        layout = LEGACY_COLUMNS
    elif set(PATH_COLUMNS) <= cols:
        layout = PATH_COLUMNS
    else:
        missing = [c for c in LEGACY_COLUMNS if c not in cols] if "path" not in cols else ["sample_id"]
        raise SampleSheetError(f"{sheet}: missing column(s) {', '.join(missing)} (a sheet has columns "
                               f"{', '.join(LEGACY_COLUMNS)} or {', '.join(PATH_COLUMNS)}; found "
                               f"{', '.join(df.columns) or 'none'})")
    if len(df) == 0:
        raise SampleSheetError(f"{sheet}: no rows")
    rows, seen = [], {}
    for i, rec in enumerate(df.to_dict("records")):
        line = i + 2  # header is line 1
        row = {}
        for col in layout:
            value = str(rec[col]).strip()
            if not value:
                raise SampleSheetError(f"{sheet}, line {line}: column '{col}' is empty")
            if col == "sample_id":
                if value in seen:
                    raise SampleSheetError(f"{sheet}, line {line}: sample_id '{value}' repeats line {seen[value]}")
                seen[value] = line
                row[col] = value
                continue
            path = Path(value).expanduser()
            if not path.is_absolute():
                path = sheet.parent / path
            if not path.exists() or (col != "path" and not path.is_file()):
                raise SampleSheetError(f"{sheet}, line {line}: column '{col}': file not found: {path}")
            row[col] = path
        rows.append(row)
    return rows

