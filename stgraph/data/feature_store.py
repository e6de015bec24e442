"""On-disk per-slide arrays: frozen-backbone features and expression rows, written once, read by batch of rows.

A :class:`FeatureStore` is a folder (``<data.cache_dir>/features``) of HDF5 files, one per slide and key::

    <root>/<slide id>.<key digest>.h5      group /<slide id>:  x (n, F) chunked by rows     (dense)
                                                               data, indices, indptr (CSR)  (sparse)
                                           attribute "key" on the group: the full key as JSON

The key names everything the array depends on (backbone, weights identity — a file's content fingerprint or a
hub id —, backbone input size, patch side and µm, the spot coordinates' hash, the image's content
fingerprint, the encoder's settings, ...). Its digest names the file and the full key is compared on every
open, so a changed key is a miss, never a stale hit. Every dataset carries a Fletcher-32 checksum per chunk:
a damaged block fails its read (:class:`StoreDamagedError`, naming the file) and a cache user recomputes it.
A file is built beside its final name and renamed onto it (:func:`~stgraph.utils.io.atomic_path`), so a
reader sees a complete file or none. One file per slide rather than one group per slide in a shared file:
HDF5 cannot swap one group of a file in atomically, and ranks or workers write different slides at once.

Readers (:class:`StoredArray`, :class:`StoredCSR`) are small picklable handles (path + shape): each process
(a ``DataLoader`` worker) opens the file on first use, and rows are read in sorted order by runs of whole
chunks, which is what HDF5 reads from disk anyway.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Optional, Union

import numpy as np
import scipy.sparse as sp

from ..errors import StgraphError

__all__ = ["FeatureStore", "StoredArray", "StoredCSR", "StoreKeyError", "StoreDamagedError", "weights_identity",
           "key_digest", "STORE_FORMAT"]


class StoreKeyError(StgraphError, KeyError):
    """No entry of this slide under this key in the store (a miss)."""


class StoreDamagedError(StgraphError, OSError):
    """A stored block fails its checksum (or cannot be read): the file is damaged, never used as it is."""


#: Version of the files' layout, part of every key: files of earlier layouts (without checksums) are misses.
STORE_FORMAT = 2


def _checked(path: Path, read):
    """``read()``, with a damaged block (HDF5's Fletcher-32 checksum, a truncated file) reported naming the
    file instead of h5py's bare error."""
    try:
        return read()
    except (OSError, RuntimeError) as err:
        raise StoreDamagedError(f"feature store file {path} is damaged ({err}); delete it and it is recomputed "
                                "on the next use") from None


def key_digest(key: dict) -> str:
    """16 hex digits of the SHA-256 of ``key`` as sorted JSON (the file name's suffix)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]




def weights_identity(weights: Optional[Union[str, os.PathLike]], pretrained: bool = True) -> str:
    """What backbone weights are, for a cache key: a weights file's content fingerprint
    (:func:`~stgraph.utils.io.file_fingerprint`: a file replaced under the same name is a new identity), else
    the hub id / tag given, else ``imagenet`` or ``random``."""
    if weights:
        path = Path(weights).expanduser()
        if path.is_file():
            from ..utils.io import file_fingerprint

            return file_fingerprint(path)
        return f"id:{weights}"
    return "imagenet" if pretrained else "random"


def _safe(slide_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(slide_id))


def _runs(ids: np.ndarray) -> list[tuple[int, int]]:
    """Sorted unique integers → half-open runs ``[(a, b), ...]`` of consecutive values."""
    if len(ids) == 0:
        return []
    breaks = np.flatnonzero(np.diff(ids) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(ids)]])
    return [(int(ids[s]), int(ids[e - 1]) + 1) for s, e in zip(starts, ends)]


class _Handle:
    """A lazily opened, per-process h5py handle (dropped when pickled, reopened after a fork)."""

    def __init__(self, path: Path, group: str):
        self.path, self.group = Path(path), group
        self._file = None
        self._pid = None

    def _g(self):
        if self._file is None or self._pid != os.getpid():
            import h5py

            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file[self.group]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"] = state["_pid"] = None
        return state

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None


class StoredArray(_Handle):
    """A dense (n, F) array in a store file; ``arr[rows]`` reads those rows (any order, repeats allowed).

    ``shape``, ``dtype`` (as stored) and ``chunk_rows`` are known without reading data.
    """

    def __init__(self, path: Path, group: str, shape: tuple, dtype, chunk_rows: int):
        super().__init__(path, group)
        self.shape, self.dtype, self.chunk_rows = tuple(shape), np.dtype(dtype), int(chunk_rows)

    def __len__(self) -> int:
        return self.shape[0]

    def read_range(self, start: int, stop: int, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Rows ``start:stop`` (one contiguous read), into ``out`` ((stop − start, ...) of the stored dtype,
        e.g. a slice of a larger buffer) when given: no intermediate copy."""
        ds = self._g()["x"]
        if out is None:
            return _checked(self.path, lambda: ds[start:stop])
        if stop > start:
            _checked(self.path, lambda: ds.read_direct(out, source_sel=np.s_[start:stop]))
        return out

    def __getitem__(self, rows) -> np.ndarray:
        if isinstance(rows, slice):
            return self.read_range(*rows.indices(self.shape[0])[:2])
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"rows out of range 0..{self.shape[0] - 1} in {self.path}")
        uniq, inverse = np.unique(rows, return_inverse=True)
        # Whole chunks, in order, by runs of consecutive chunks: HDF5 reads a chunk at a time anyway, and
        # h5py's point selection is slow for many rows.
        cs = self.chunk_rows
        ds = self._g()["x"]
        if not len(uniq):
            return ds[0:0]
        starts, parts, pos = [], [], [0]
        for a, b in _runs(np.unique(uniq // cs)):
            start, stop = a * cs, min(b * cs, self.shape[0])
            starts.append(start)
            parts.append(ds[start:stop])
            pos.append(pos[-1] + stop - start)
        block = np.concatenate(parts) if len(parts) > 1 else parts[0]
        run = np.searchsorted(np.asarray(starts), uniq, side="right") - 1
        return block[uniq - np.asarray(starts)[run] + np.asarray(pos[:-1])[run]][inverse]

    def read_all(self) -> np.ndarray:
        return self.read_range(0, self.shape[0])


class StoredCSR(_Handle):
    """A sparse (n, G) CSR matrix in a store file; ``m[rows]`` reads those rows as a ``csr_matrix``.

    ``indptr`` (n + 1 integers) is read once per process; rows are read by runs of consecutive rows, each
    one contiguous read of ``data`` and ``indices``.
    """

    def __init__(self, path: Path, group: str, shape: tuple, dtype):
        super().__init__(path, group)
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self._indptr = None

    def __getstate__(self):
        state = super().__getstate__()
        state["_indptr"] = None
        return state

    def __len__(self) -> int:
        return self.shape[0]

    def _ptr(self) -> np.ndarray:
        if self._indptr is None or self._pid != os.getpid():
            self._indptr = _checked(self.path, lambda: self._g()["indptr"][:].astype(np.int64))
        return self._indptr

    def read_range(self, start: int, stop: int) -> sp.csr_matrix:
        ptr = self._ptr()
        g = self._g()
        a, b = ptr[start], ptr[stop]
        data, indices = _checked(self.path, lambda: (g["data"][a:b], g["indices"][a:b]))
        return sp.csr_matrix((data, indices, ptr[start:stop + 1] - a), shape=(stop - start, self.shape[1]))

    def __getitem__(self, rows) -> sp.csr_matrix:
        if isinstance(rows, slice):
            return self.read_range(*rows.indices(self.shape[0])[:2])
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"rows out of range 0..{self.shape[0] - 1} in {self.path}")
        uniq, inverse = np.unique(rows, return_inverse=True)
        runs = _runs(uniq)
        if not runs:
            return sp.csr_matrix((0, self.shape[1]), dtype=self.dtype)
        block = sp.vstack([self.read_range(a, b) for a, b in runs], format="csr")
        return block[inverse]

    def read_all(self) -> sp.csr_matrix:
        return self.read_range(0, self.shape[0])


class FeatureStore:
    """Per-slide arrays on disk under ``root`` (see the module docstring for the layout and the keys).

    Examples
    --------
    >>> store = FeatureStore(tmp / "features")                                     # doctest: +SKIP
    >>> key = {"kind": "features", "backbone": "resnet50", "weights": weights_identity(w), ...}
    >>> feats = store.open("A1", key) if store.has("A1", key) else store.write("A1", key, compute())
    >>> feats[[5, 0, 17]]                      # (3, F) rows, read from disk
    """

    def __init__(self, root: Union[str, os.PathLike]):
        self.root = Path(root)

    @staticmethod
    def _full(key: dict) -> dict:
        """The key as stored: the caller's key and the layout version (:data:`STORE_FORMAT`)."""
        return {**key, "store_format": STORE_FORMAT}

    def path(self, slide_id: str, key: dict) -> Path:
        return self.root / f"{_safe(slide_id)}.{key_digest(self._full(key))}.h5"

    def _meta(self, slide_id: str, key: dict):
        """``(shape, dtype, chunk_rows, sparse)`` of a valid entry, else ``None`` (missing, damaged, other key)."""
        path = self.path(slide_id, key)
        if not path.is_file():
            return None
        import h5py

        try:
            with h5py.File(path, "r") as f:
                g = f[str(slide_id)]
                if json.loads(g.attrs["key"]) != json.loads(json.dumps(self._full(key), sort_keys=True, default=str)):
                    return None
                shape = tuple(int(s) for s in g.attrs["shape"])
                if "x" in g:
                    ds = g["x"]
                    return shape, ds.dtype, (ds.chunks or (shape[0] or 1,))[0], False
                return shape, g["data"].dtype, None, True
        except (OSError, KeyError, ValueError):
            return None  # a damaged entry is recomputed, never trusted

    def has(self, slide_id: str, key: dict) -> bool:
        """Whether a complete entry of ``slide_id`` under exactly ``key`` exists."""
        return self._meta(slide_id, key) is not None

    def open(self, slide_id: str, key: dict) -> Union[StoredArray, StoredCSR]:
        """The stored array of ``slide_id`` under ``key``; :class:`StoreKeyError` on a miss."""
        meta = self._meta(slide_id, key)
        if meta is None:
            raise StoreKeyError(f"feature store {self.root}: no entry for slide {slide_id!r} under this key")
        shape, dtype, chunk_rows, sparse = meta
        path = self.path(slide_id, key)
        if sparse:
            return StoredCSR(path, str(slide_id), shape, dtype)
        return StoredArray(path, str(slide_id), shape, dtype, chunk_rows)

    def write(self, slide_id: str, key: dict, array, chunk_rows: int = 256,
              dtype=None) -> Union[StoredArray, StoredCSR]:
        """Store ``array`` ((n, F, ...) dense, or a scipy sparse matrix stored as CSR) for ``slide_id`` under
        ``key``, atomically, replacing an entry of the same key; returns its reader.

        ``chunk_rows`` rows per HDF5 chunk (dense); ``dtype`` casts before writing (e.g. float16).
        """
        import h5py

        from ..utils.io import atomic_path

        path = self.path(slide_id, key)
        from ..utils.io import check_free_space

        check_free_space(path, array.data.nbytes if sp.issparse(array) else np.asarray(array).nbytes,
                         what="feature store entry")
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            g = f.create_group(str(slide_id))
            g.attrs["key"] = json.dumps(self._full(key), sort_keys=True, default=str)
            if sp.issparse(array):
                m = sp.csr_matrix(array)
                m.sort_indices()
                if dtype is not None:
                    m = m.astype(dtype)
                g.attrs["shape"] = np.asarray(m.shape, dtype=np.int64)
                # Every dataset chunked with a Fletcher-32 checksum per chunk: a damaged block fails its read.
                for name, values in (("data", m.data), ("indices", m.indices.astype(np.int32)),
                                     ("indptr", m.indptr.astype(np.int64))):
                    g.create_dataset(name, data=values, chunks=True if len(values) else None,
                                     fletcher32=bool(len(values)))
            else:
                x = np.asarray(array)
                if dtype is not None:
                    x = x.astype(dtype, copy=False)
                if x.ndim < 2:
                    raise ValueError(f"feature store: slide {slide_id!r} array must be (n, F, ...), got {x.shape}")
                g.attrs["shape"] = np.asarray(x.shape, dtype=np.int64)
                chunks = (max(1, min(int(chunk_rows), x.shape[0])),) + x.shape[1:] if x.size else None
                g.create_dataset("x", data=x, chunks=chunks, fletcher32=chunks is not None)
        return self.open(slide_id, key)

    def entries(self) -> list[Path]:
        """The store's files (for size reports and clean-up)."""
        return sorted(self.root.glob("*.h5")) if self.root.is_dir() else []
