"""Predict a cohort of whole-slide images: one command, sharded over processes, resumable, failure-isolated.

``stgraph predict --model RUN --wsi-sheet cohort.csv --out DIR`` (or ``--wsi 'slides/*.svs' --out DIR``) runs
:func:`predict_cohort`. Launched plainly it is one process; under ``torchrun --nproc-per-node N [--nnodes M]``
(the engine training uses, no scheduler of its own) the slides are sharded over the ranks, balanced by their
estimated tissue area (largest first to the least-loaded rank), and each rank writes its own slides.

* **Atomic outputs**: each slide's prediction is ``DIR/<slide>.<format>``, written beside and renamed onto its
  name (a kill leaves the previous state, never a partial file).
* **A manifest**: ``DIR/manifest.csv`` has one row per slide (``slide_id, path, status, spots, seconds,
  peak_rss_mib, error, output, rank``), rewritten atomically; while ranks work, each keeps its own rows in
  ``DIR/.manifest.rank<r>.csv`` (updated after every slide), merged at the end (and at the next start, after a
  kill).
* **Resumable**: a slide whose row says ``done`` and whose output exists is skipped (``--force`` redoes it).
* **Isolated**: a slide that fails (unreadable, corrupt, no tissue, over ``--max-spots``, any exception) is
  recorded with its error and the others go on. The command then exits :data:`EXIT_SOME_FAILED` (3) and names
  them; 0 when all succeeded.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..errors import StgraphError
from ..utils.distributed import DistEnv, all_gather_object, barrier
from ..utils.io import atomic_write_text

__all__ = ["CohortSlide", "read_wsi_sheet", "cohort_from_paths", "predict_cohort", "MANIFEST", "EXIT_SOME_FAILED",
           "CohortSheetError", "estimate_tissue_area", "shard_slides", "read_manifest"]

log = logging.getLogger("stgraph")

#: The cohort's record, in the output folder.
MANIFEST = "manifest.csv"
#: Exit status of a cohort in which some slides failed (0: all succeeded; 2: refused before any compute).
EXIT_SOME_FAILED = 3
_COLUMNS = ("slide_id", "path", "status", "spots", "seconds", "peak_rss_mib", "error", "output", "rank")


class CohortSheetError(StgraphError, ValueError):
    """A cohort sheet stgraph cannot read (missing column, repeated id), found before any slide is opened."""


@dataclass(frozen=True)
class CohortSlide:
    """One slide of a cohort: its id (the output's name), its file, and its pixel size when the sheet gives one."""

    slide_id: str
    path: Path
    mpp: Optional[float] = None


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _check_id(sid: str, where: str) -> str:
    """A slide id names its output file in the cohort folder: no folder parts, no hidden or reserved names."""
    if "/" in sid or "\\" in sid or sid.startswith(".") or sid.lower() == Path(MANIFEST).stem:
        raise CohortSheetError(f"{where}: slide id {sid!r} cannot name an output file in the cohort folder (no '/', "
                               f"no leading '.', not {Path(MANIFEST).stem!r})")
    return sid


def read_wsi_sheet(sheet) -> list[CohortSlide]:
    """A cohort sheet (CSV): a ``path`` column (relative to the sheet's folder), optional ``slide_id`` (or
    ``sample_id``; default the file name) and ``mpp`` (µm per pixel, for slides that do not state it). Checked
    whole before any slide is opened: a missing column, an empty path, a repeated id or a bad ``mpp`` is one
    error naming the sheet and line. A path that does not exist is *not* an error here: it is that slide's
    failure, recorded in the manifest, and the others go on."""
    sheet = Path(sheet)
    if not sheet.is_file():
        raise CohortSheetError(f"cohort sheet not found: {sheet}")
    try:
        rows = list(csv.DictReader(io.StringIO(sheet.read_text())))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise CohortSheetError(f"{sheet}: not a readable CSV ({err})") from None
    if not rows or "path" not in rows[0]:
        raise CohortSheetError(f"{sheet}: a cohort sheet needs a 'path' column (and optionally slide_id, mpp); "
                               f"found {list(rows[0]) if rows else 'no rows'}")
    out, seen = [], {}
    for i, row in enumerate(rows, start=2):
        where = f"{sheet}, line {i}"
        path = (row.get("path") or "").strip()
        if not path:
            raise CohortSheetError(f"{where}: empty path")
        full = Path(path) if Path(path).is_absolute() else sheet.parent / path
        sid = _check_id((row.get("slide_id") or row.get("sample_id") or "").strip() or _stem(full), where)
        if sid in seen:
            raise CohortSheetError(f"{where}: slide id {sid!r} repeats line {seen[sid]} (ids name the outputs)")
        seen[sid] = i
        mpp = (row.get("mpp") or "").strip()
        try:
            value = float(mpp) if mpp else None
        except ValueError:
            raise CohortSheetError(f"{where}: mpp {mpp!r} is not a number (µm per pixel)") from None
        if value is not None and not 0.01 <= value <= 100:
            raise CohortSheetError(f"{where}: mpp {value:g} is outside 0.01–100 µm per pixel")
        out.append(CohortSlide(sid, full, value))
    return out


def cohort_from_paths(paths: Sequence, mpp: Optional[float] = None) -> list[CohortSlide]:
    """Slides given as paths (``--wsi`` with several, or a folder's expansion); ids from the file names, which
    must not repeat."""
    slides, seen = [], {}
    for p in paths:
        p = Path(p)
        sid = _check_id(_stem(p), str(p))
        if sid in seen:
            raise CohortSheetError(f"{p} and {seen[sid]} would both be named {sid!r}: give a cohort sheet with "
                                   "slide_id to tell them apart")
        seen[sid] = p
        slides.append(CohortSlide(sid, p, mpp))
    return slides


def estimate_tissue_area(slide: CohortSlide, min_saturation: int = 15) -> float:
    """The slide's tissue area in µm² from a small thumbnail (0 when it cannot be opened: its failure is
    recorded when it is predicted). What shards balance, and the progress bar counts."""
    from ..data.wsi import WSIImage
    from ..data.wsi.tissue import tissue_mask

    try:
        with WSIImage(slide.path, mpp=slide.mpp, require_mpp=False) as wsi:
            thumb = wsi.thumbnail(512)
            mask = tissue_mask(thumb, min_saturation=min_saturation)
            px = wsi.shape[1] / thumb.shape[1]
            mpp = wsi.mpp or 1.0
            return float(mask.sum()) * (px * mpp) ** 2
    except Exception:  # noqa: BLE001 - an unreadable slide: predicted (and recorded as failed) later
        return 0.0


def shard_slides(slides: Sequence[CohortSlide], areas: Sequence[float], rank: int, world: int) -> list[CohortSlide]:
    """Rank ``rank``'s slides of ``world``: largest tissue first to the rank with the least tissue so far (ties:
    the lower rank), the same plan on every rank; in the cohort's order."""
    load = [0.0] * world
    owner = {}
    for i in sorted(range(len(slides)), key=lambda i: (-float(areas[i]), slides[i].slide_id)):
        r = min(range(world), key=lambda k: (load[k], k))
        owner[i] = r
        load[r] += max(float(areas[i]), 1.0)
    return [s for i, s in enumerate(slides) if owner[i] == rank]


def read_manifest(out_dir: Path) -> dict[str, dict]:
    """Every slide's latest record: ``manifest.csv`` and the ranks' part files (a killed run's included)."""
    records: dict[str, dict] = {}
    for path in [out_dir / MANIFEST, *sorted(out_dir.glob(".manifest.rank*.csv"))]:
        if path.is_file():
            try:
                for row in csv.DictReader(io.StringIO(path.read_text())):
                    if row.get("slide_id"):
                        records[row["slide_id"]] = row
            except (OSError, csv.Error):
                continue
    return records


def _write_csv(path: Path, rows: Sequence[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    atomic_write_text(path, buf.getvalue())


def _consolidate(out_dir: Path) -> None:
    """Fold the ranks' part files (left by a run that was killed) into ``manifest.csv``, then remove them."""
    parts = sorted(out_dir.glob(".manifest.rank*.csv"))
    if not parts:
        return
    records = read_manifest(out_dir)
    _write_csv(out_dir / MANIFEST, list(records.values()))
    for p in parts:
        p.unlink(missing_ok=True)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def predict_cohort(run, slides: Sequence[CohortSlide], out_dir, predict_one: Callable, fmt: str = "h5ad",
                   force: bool = False, dist_env: Optional[DistEnv] = None, progress: bool = True) -> dict:
    """Predict every slide of a cohort into ``out_dir`` (module docstring); returns ``{"done", "failed",
    "skipped"}`` lists of slide ids over the whole cohort (every rank gets the same).

    ``predict_one(run, slide: CohortSlide) -> AnnData`` predicts one slide (the CLI passes
    :func:`~stgraph.inference.wsi.predict_wsi` with its options). Outputs are written with
    :func:`~stgraph.inference.write_prediction`.
    """
    from tqdm.auto import tqdm

    from .predict import write_prediction

    dist_env = dist_env or DistEnv()
    out_dir = Path(out_dir)
    if dist_env.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        _consolidate(out_dir)  # a killed run's part files, before this run's ranks write theirs
    barrier()
    records = read_manifest(out_dir)
    output = {s.slide_id: out_dir / f"{s.slide_id}.{fmt}" for s in slides}
    done_before = {s.slide_id for s in slides if not force and records.get(s.slide_id, {}).get("status") == "done"
                   and output[s.slide_id].exists()}  # a file, or a .zarr store's folder
    todo = [s for s in slides if s.slide_id not in done_before]
    # Every rank estimates a slice of the areas; all of them plan the same shards from the gathered list.
    mine = [i for i in range(len(todo)) if i % dist_env.world_size == dist_env.rank]
    parts = all_gather_object({i: estimate_tissue_area(todo[i]) for i in mine})
    areas = [0.0] * len(todo)
    for part in parts:
        for i, a in part.items():
            areas[i] = a
    shard = shard_slides(todo, areas, dist_env.rank, dist_env.world_size) if todo else []
    area_of = {s.slide_id: a for s, a in zip(todo, areas)}
    if dist_env.is_main:
        log.info("cohort: %d slides, %d done before (skipped), %d to predict in %d process(es)", len(slides),
                 len(done_before), len(todo), dist_env.world_size)
    part_path = out_dir / f".manifest.rank{dist_env.rank}.csv"
    mine_rows: list[dict] = []
    bar = tqdm(total=sum(area_of[s.slide_id] for s in shard) / 1e6 or None, unit="mm²", desc="cohort",
               disable=not (progress and dist_env.is_main))
    for slide in shard:
        start = time.perf_counter()
        row = {"slide_id": slide.slide_id, "path": str(slide.path), "rank": dist_env.rank, "output": ""}
        try:
            pred = predict_one(run, slide)
            write_prediction(pred, output[slide.slide_id], force=True)
            row.update(status="done", spots=int(pred.n_obs), output=output[slide.slide_id].name, error="")
            log.info("cohort: %s: %d spots in %.1f s", slide.slide_id, pred.n_obs, time.perf_counter() - start)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # noqa: BLE001 - one slide's failure never stops the others
            message = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
            row.update(status="failed", spots=0, error=message)
            log.warning("cohort: %s failed: %s", slide.slide_id, message)
        row.update(seconds=round(time.perf_counter() - start, 2), peak_rss_mib=round(_peak_rss_mib(), 1))
        mine_rows.append(row)
        _write_csv(part_path, mine_rows)  # after every slide: a kill loses at most the slide under way
        bar.update(area_of.get(slide.slide_id, 0.0) / 1e6)
    bar.close()
    barrier()
    if dist_env.is_main:
        merged = read_manifest(out_dir)
        for s in slides:  # skipped slides keep their earlier record
            merged.setdefault(s.slide_id, {"slide_id": s.slide_id, "path": str(s.path), "status": "pending"})
        ours = [s.slide_id for s in slides]
        others = [k for k in merged if k not in set(ours)]  # slides of an earlier sheet keep their records
        _write_csv(out_dir / MANIFEST, [merged[k] for k in ours + others])
        for p in out_dir.glob(".manifest.rank*.csv"):
            p.unlink(missing_ok=True)
    barrier()
    final = read_manifest(out_dir)
    status = {s.slide_id: final.get(s.slide_id, {}).get("status", "pending") for s in slides}
    return {"done": [s for s, v in status.items() if v == "done" and s not in done_before],
            "skipped": sorted(done_before),
            "failed": [s for s, v in status.items() if v == "failed"],
            "errors": {s: final[s].get("error", "") for s, v in status.items() if v == "failed"}}
