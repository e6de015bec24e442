"""``LazySlideCollection``: a cohort of slides on disk, each opened only when it is needed.

A cohort is a folder or a sample sheet. Nothing is read at construction but the listing; a slide is read
(:func:`~stgraph.data.readers.read_slide`) when it is indexed, and the last ``cache_size`` slides read are
kept (LRU). Spot counts and gene names of ``.h5ad`` slides (HEST ``st/<id>.h5ad`` included) are read from
the HDF5 headers, without the expression, so a cohort can be listed and sharded over ranks
(:meth:`LazySlideCollection.shard`, balanced by spot count) before any slide is loaded.

Sources
-------
- a folder: each ``*.h5ad`` file, each Space Ranger folder, each legacy ST folder is one slide (id: the file
  or folder name); a HEST-1k root (``st/``, ``wsis/``) is one slide per ``st/<id>.h5ad``;
- a sample sheet (CSV): ``sample_id, path[, image][, format]``, paths relative to the sheet. ``image`` is a
  full-resolution / whole-slide image for slides whose ``path`` holds none (an ``.h5ad`` of expression and
  spot centres in that image's pixels), or the image of a ``spot_csv`` spot table; ``format`` names a reader
  (``hest``: ``path`` is the HEST root, ``sample_id`` the sample).
"""
from __future__ import annotations

import collections
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence, Union

import numpy as np
from anndata import AnnData

from .errors import SlideFormatError
from .slide_id import set_slide_id
from ..keys import Key

__all__ = ["SlideEntry", "LazySlideCollection", "shard_by_size"]


@dataclass(frozen=True)
class SlideEntry:
    """Where one slide of a cohort lives (see the module docstring)."""

    sample_id: str
    path: Path
    image: Optional[Path] = None
    format: Optional[str] = None
    kwargs: dict = field(default_factory=dict, hash=False, compare=False)

    def h5ad(self) -> Optional[Path]:
        """The ``.h5ad`` file holding this slide's spots, when there is one (read by header)."""
        if self.format == "hest":
            return self.path / "st" / f"{self.sample_id}.h5ad"
        if self.path.suffix == ".h5ad" and self.format in (None, "h5ad"):
            return self.path
        return None


def shard_by_size(sizes: Mapping[str, int], rank: int, world_size: int) -> list[str]:
    """The ids of rank ``rank``'s shard: largest slides first, each to the rank with the fewest spots so far
    (ties: the lower rank), the same on every rank; returned in the input order."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    if len(sizes) < world_size:
        raise ValueError(f"{len(sizes)} slides cannot be sharded over {world_size} ranks (one slide at least each)")
    load = [0] * world_size
    owner = {}
    for sid in sorted(sizes, key=lambda s: (-int(sizes[s]), s)):
        r = min(range(world_size), key=lambda i: (load[i], i))
        owner[sid] = r
        load[r] += int(sizes[sid])
    return [sid for sid in sizes if owner[sid] == rank]


def _h5ad_header(path: Path) -> tuple[int, list[str]]:
    """(n_obs, var names) of an ``.h5ad`` from its HDF5 header and index arrays (no expression is read)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            def index(group: str) -> list[str]:
                g = f[group]
                name = g.attrs.get("_index", "_index")
                values = g[name]
                if isinstance(values, h5py.Group):  # categorical / nullable string encodings
                    values = values["categories"][:][values["codes"][:]]
                else:
                    values = values[:]
                return [v.decode() if isinstance(v, bytes) else str(v) for v in values]

            x = f["X"]
            n = int(x.attrs["shape"][0]) if isinstance(x, h5py.Group) else int(x.shape[0])
            return n, index("var")
    except (OSError, KeyError) as err:
        raise SlideFormatError(f"cannot read the header of {path}: {err}") from err


class LazySlideCollection(Mapping[str, AnnData]):
    """Slides on disk keyed by sample id, read when indexed (see the module docstring).

    Parameters
    ----------
    entries
        One :class:`SlideEntry` per slide (ids unique).
    cache_size
        Slides kept in memory after reading (least recently used dropped first); 0 keeps none.

    Examples
    --------
    >>> cohort = LazySlideCollection.from_sheet("cohort.csv")                         # doctest: +SKIP
    >>> cohort.spot_counts()                  # from the headers: no expression read    # doctest: +SKIP
    >>> mine = cohort.shard(rank, world_size)  # this rank's slides, balanced by spots  # doctest: +SKIP
    >>> adata = mine[mine.ids[0]]             # read now, kept in a small LRU           # doctest: +SKIP
    """

    def __init__(self, entries: Sequence[SlideEntry], cache_size: int = 2):
        self._entries: dict[str, SlideEntry] = {}
        for e in entries:
            if e.sample_id in self._entries:
                raise ValueError(f"duplicate sample id {e.sample_id!r}: ids must be unique in a cohort")
            self._entries[e.sample_id] = e
        self.cache_size = int(cache_size)
        self._cache: "collections.OrderedDict[str, AnnData]" = collections.OrderedDict()
        self._n_spots: dict[str, int] = {}
        self.reads = 0  # slides read from disk so far (for tests and progress reports)

    # constructors -----------------------------------------------------------------------------------
    @classmethod
    def from_folder(cls, folder: Union[str, os.PathLike], **kwargs) -> "LazySlideCollection":
        """One slide per ``*.h5ad`` file and per slide folder in ``folder`` (a HEST root: per ``st/*.h5ad``)."""
        from .readers import READERS

        folder = Path(folder)
        if not folder.is_dir():
            raise SlideFormatError(f"cohort folder {folder} does not exist or is not a folder")
        if (folder / "st").is_dir() and (folder / "wsis").is_dir():
            entries = [SlideEntry(p.stem, folder, format="hest") for p in sorted((folder / "st").glob("*.h5ad"))]
        else:
            entries = []
            for p in sorted(folder.iterdir()):
                if p.name.startswith("."):
                    continue
                if p.is_file() and p.suffix == ".h5ad":
                    entries.append(SlideEntry(p.stem, p))
                elif p.is_dir() and any(getattr(r, "detect", None) and r.detect(p, {}) for r in READERS.values()):
                    entries.append(SlideEntry(p.name, p))
        if not entries:
            raise SlideFormatError(f"cohort folder {folder} holds no slide (.h5ad files, Space Ranger, legacy "
                                   "ST or HEST folders)")
        return cls(entries, **kwargs)

    @classmethod
    def from_sheet(cls, sheet: Union[str, os.PathLike], **kwargs) -> "LazySlideCollection":
        """Slides listed in a CSV with columns ``sample_id, path[, image][, format]`` (paths relative to it)."""
        import pandas as pd

        from .readers import READERS

        sheet = Path(sheet)
        if not sheet.is_file():
            raise SlideFormatError(f"sample sheet {sheet} not found")
        table = pd.read_csv(sheet, dtype=str, keep_default_na=False)
        missing = [c for c in ("sample_id", "path") if c not in table.columns]
        if missing:
            raise SlideFormatError(f"sample sheet {sheet} lacks column(s) {missing} (found {list(table.columns)})")
        entries = []
        for i, row in table.iterrows():
            def resolve(p: str) -> Path:
                p = Path(p).expanduser()
                return p if p.is_absolute() else sheet.parent / p

            path = resolve(row["path"])
            image = resolve(row["image"]) if row.get("image") else None
            fmt = row.get("format") or None
            where = f"sample sheet {sheet}, row {i + 2} ({row['sample_id']!r})"
            if not row["sample_id"]:
                raise SlideFormatError(f"sample sheet {sheet}, row {i + 2}: empty sample_id")
            if fmt is not None and fmt not in READERS:
                raise SlideFormatError(f"{where}: unknown format {fmt!r} (choose from {', '.join(READERS.names())})")
            for p, what in ((path, "path"), (image, "image")):
                if p is not None and not p.exists():
                    raise SlideFormatError(f"{where}: {what} {p} does not exist")
            entries.append(SlideEntry(row["sample_id"], path, image, fmt))
        return cls(entries, **kwargs)

    # mapping protocol ---------------------------------------------------------------------------------
    def __getitem__(self, sample_id: str) -> AnnData:
        if sample_id not in self._entries:
            raise KeyError(f"no slide {sample_id!r}; the cohort holds {len(self)} slides, e.g. {self.ids[:5]}")
        if sample_id in self._cache:
            self._cache.move_to_end(sample_id)
            return self._cache[sample_id]
        adata = self.read(sample_id)
        if self.cache_size > 0:
            self._cache[sample_id] = adata
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return adata

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"LazySlideCollection({len(self)} slides, {len(self._cache)} in memory)"

    @property
    def ids(self) -> list[str]:
        return list(self._entries)

    def entry(self, sample_id: str) -> SlideEntry:
        return self._entries[sample_id]

    # reading --------------------------------------------------------------------------------------------
    def read(self, sample_id: str) -> AnnData:
        """Read slide ``sample_id`` from disk (no LRU), its ``obs['slide_id']`` set to the sample id."""
        from .readers import read_slide

        e = self._entries[sample_id]
        if e.format == "hest":
            adata = read_slide(e.path, format="hest", sample_id=e.sample_id, **e.kwargs)
        elif e.format == "spot_csv":
            if e.image is None:
                raise SlideFormatError(f"slide {sample_id!r}: a spot_csv table needs an image column")
            adata = read_slide(e.image, format="spot_csv", csv_path=e.path, slide_id=sample_id, **e.kwargs)
        else:
            adata = read_slide(e.path, format=e.format, **e.kwargs)
            if e.image is not None:
                from .readers.base import _attach_image

                mpp = (adata.uns.get(Key.uns.spatial, {}).get(sample_id, {}).get(Key.uns.metadata, {})
                       .get(Key.metadata.microns_per_pixel))
                _attach_image(adata, sample_id, e.image, None, None, mpp, f"slide {sample_id!r}")
        self.reads += 1
        if Key.obs.slide_id not in adata.obs or set(adata.obs[Key.obs.slide_id].astype(str)) != {sample_id}:
            set_slide_id(adata, sample_id)
        self._n_spots[sample_id] = adata.n_obs
        return adata

    def n_spots(self, sample_id: str) -> int:
        """Spots of one slide: from the ``.h5ad`` header when there is one, else by reading the slide once."""
        if sample_id not in self._n_spots:
            h5ad = self._entries[sample_id].h5ad()
            self._n_spots[sample_id] = _h5ad_header(h5ad)[0] if h5ad is not None else self[sample_id].n_obs
        return self._n_spots[sample_id]

    def spot_counts(self) -> dict[str, int]:
        return {sid: self.n_spots(sid) for sid in self.ids}

    def var_names(self, sample_id: str) -> list[str]:
        """Gene names of one slide (from the ``.h5ad`` header when there is one)."""
        h5ad = self._entries[sample_id].h5ad()
        if h5ad is not None and self._entries[sample_id].format != "hest":
            return _h5ad_header(h5ad)[1]
        return list(map(str, self[sample_id].var_names))

    # views ----------------------------------------------------------------------------------------------
    def subset(self, ids: Sequence[str]) -> "LazySlideCollection":
        if isinstance(ids, str):
            ids = [ids]
        for sid in ids:
            if sid not in self._entries:
                raise KeyError(f"no slide {sid!r} in the cohort")
        out = LazySlideCollection([self._entries[s] for s in ids], cache_size=self.cache_size)
        out._n_spots = {s: n for s, n in self._n_spots.items() if s in set(ids)}
        return out

    def without(self, ids: Union[str, Sequence[str]]) -> "LazySlideCollection":
        drop = {ids} if isinstance(ids, str) else set(ids)
        return self.subset([s for s in self.ids if s not in drop])

    def shard(self, rank: int, world_size: int) -> "LazySlideCollection":
        """This rank's slides (:func:`shard_by_size` over :meth:`spot_counts`): every slide in exactly one
        shard, shards' spot totals as even as whole slides allow."""
        return self.subset(shard_by_size(self.spot_counts(), rank, world_size))

    def total_spots(self) -> int:
        return int(np.sum(list(self.spot_counts().values())))
