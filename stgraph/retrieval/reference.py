"""The reference store: embeddings of the reference spots paired with their expression, saved as one HDF5 file.

HDF5 layout (``format`` attribute ``stgraph.ReferenceStore``, ``version`` 1)::

    /embeddings        (R, d) float32
    /expression        (R, G) float32 dataset, or a group with data / indices / indptr (CSR) and a
                       ``shape`` attribute when the expression is sparse
    /genes             (G,) utf-8 strings
    /slide_ids         (R,) utf-8 strings
    /spot_ids          (R,) utf-8 strings
    attributes         format, version, kind ('spot' | 'image'), meta (JSON text)

A store loaded from a file keeps its FAISS index beside it, ``<file>.<key>.faiss`` (``faiss.write_index``),
so the first prediction of a saved run reads the index instead of building it. ``key`` hashes the
embeddings (SHA-256 of their bytes and shape) and the backend's settings: a stale index (other embeddings,
e.g. after ``extend``, or other settings) is never read; it is rebuilt, written atomically, and the older
index files of that store are removed (:meth:`ReferenceStore.save` removes them too). A run folder that
cannot be written still predicts, building the index in memory.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import scipy.sparse as sp
import torch

from ..errors import StgraphError
from ..keys import Key
from ..utils import atomic_path
from .impute import impute, resolve_backend
from .knn import FaissKNN, KNNBackend, all_finite, create_knn_backend

__all__ = ["ReferenceStore", "ReferenceStoreError", "REFERENCE_KINDS", "saved_index_store"]

REFERENCE_KINDS = ("spot", "image")
FORMAT_NAME = "stgraph.ReferenceStore"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("embeddings", "expression", "genes", "slide_ids", "spot_ids")


class ReferenceStoreError(StgraphError, ValueError):
    """A reference store file is corrupt, truncated, not HDF5, or inconsistent."""


def _as_embeddings(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def _as_expression(x) -> Union[np.ndarray, sp.csr_matrix]:
    if sp.issparse(x):
        return sp.csr_matrix(x, dtype=np.float32)
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def _as_str_array(x, n: int, name: str) -> np.ndarray:
    """(n,) str array; a single string is repeated n times."""
    if isinstance(x, str):
        return np.full(n, x, dtype=object).astype(str)
    arr = np.asarray(x).astype(str)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def _expression_values(expr) -> np.ndarray:
    return expr.data if sp.issparse(expr) else expr


@dataclass(eq=False)
class ReferenceStore:
    """Reference spots for kNN imputation.

    Attributes
    ----------
    embeddings : np.ndarray
        (R, d) float32 embeddings from the branch named by ``kind``.
    expression : np.ndarray or scipy.sparse.csr_matrix
        (R, G) float32 expression (a sparse input stays sparse).
    genes : list[str]
        The G gene names, in column order.
    slide_ids, spot_ids : np.ndarray
        (R,) str: the slide and barcode of each reference spot.
    kind : {'spot', 'image'}
        Which branch produced the embeddings (spot/gene branch or image branch).
    meta : dict
        JSON-serialisable provenance (method, similarity, …).
    """

    embeddings: np.ndarray
    expression: Union[np.ndarray, sp.csr_matrix]
    genes: list
    slide_ids: np.ndarray
    spot_ids: np.ndarray
    kind: str = "spot"
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.embeddings = _as_embeddings(self.embeddings)
        self.expression = _as_expression(self.expression)
        self.genes = [str(g) for g in self.genes]
        n = self.embeddings.shape[0] if self.embeddings.ndim >= 1 else 0
        self.slide_ids = _as_str_array(self.slide_ids, n, "slide_ids")
        self.spot_ids = _as_str_array(self.spot_ids, n, "spot_ids")
        self.meta = dict(self.meta or {})
        self._validate()

    def _validate(self) -> None:
        emb, expr = self.embeddings, self.expression
        if emb.ndim != 2:
            raise ValueError(f"embeddings must be (R, d), got shape {emb.shape}")
        if expr.ndim != 2:
            raise ValueError(f"expression must be (R, G), got shape {expr.shape}")
        n = emb.shape[0]
        if expr.shape[0] != n:
            raise ValueError(f"expression has {expr.shape[0]} rows but embeddings have {n}")
        if expr.shape[1] != len(self.genes):
            raise ValueError(f"expression has {expr.shape[1]} columns but there are {len(self.genes)} genes")
        if len(set(self.genes)) != len(self.genes):
            raise ValueError("gene names must be unique")
        for name in ("slide_ids", "spot_ids"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries but there are {n} spots")
        if self.kind not in REFERENCE_KINDS:
            raise ValueError(f"kind must be one of {list(REFERENCE_KINDS)}, got {self.kind!r}")
        if not all_finite(emb):
            raise ValueError("embeddings contain NaN or infinite values")
        if not all_finite(_expression_values(expr)):
            raise ValueError("expression contains NaN or infinite values")
        try:
            json.dumps(self.meta)
        except (TypeError, ValueError) as err:
            raise ValueError(f"meta must be JSON-serialisable: {err}") from err

    # -- sizes --------------------------------------------------------------------------------------
    @property
    def n_spots(self) -> int:
        """R, the number of reference spots."""
        return int(self.embeddings.shape[0])

    @property
    def n_genes(self) -> int:
        """G, the number of genes."""
        return len(self.genes)

    @property
    def dim(self) -> int:
        """d, the embedding dimension."""
        return int(self.embeddings.shape[1])

    @property
    def is_sparse(self) -> bool:
        return sp.issparse(self.expression)

    def __repr__(self) -> str:
        n_slides = len(np.unique(self.slide_ids))
        return (f"ReferenceStore(kind={self.kind!r}, n_spots={self.n_spots}, n_genes={self.n_genes}, "
                f"dim={self.dim}, n_slides={n_slides}, sparse={self.is_sparse})")

    # -- persistence --------------------------------------------------------------------------------
    def save(self, path: Union[str, Path], overwrite: bool = False, compression: Optional[str] = None) -> Path:
        """Write the store to one HDF5 file, atomically (temp file beside it, then ``os.replace``).

        Raises ``FileExistsError`` naming ``path`` if it exists and ``overwrite`` is false. ``compression``
        ('gzip', 'lzf') applies to the numeric arrays.
        """
        import h5py

        path = Path(path)
        from ..utils.io import check_free_space

        expr = self.expression.data if self.is_sparse else self.expression
        check_free_space(path, self.embeddings.nbytes + expr.nbytes, what="reference store")
        with atomic_path(path, overwrite=overwrite) as tmp, h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT_NAME
            f.attrs["version"] = FORMAT_VERSION
            f.attrs["kind"] = self.kind
            f.attrs["meta"] = json.dumps(self.meta)
            f.create_dataset("embeddings", data=self.embeddings, compression=compression)
            if self.is_sparse:
                g = f.create_group("expression")
                g.attrs["encoding"] = "csr"
                g.attrs["shape"] = np.asarray(self.expression.shape, dtype=np.int64)
                for name in ("data", "indices", "indptr"):
                    g.create_dataset(name, data=getattr(self.expression, name), compression=compression)
            else:
                f.create_dataset("expression", data=self.expression, compression=compression)
            text = h5py.string_dtype("utf-8")
            f.create_dataset("genes", data=np.asarray(self.genes, dtype=object), dtype=text)
            f.create_dataset("slide_ids", data=self.slide_ids.astype(object), dtype=text)
            f.create_dataset("spot_ids", data=self.spot_ids.astype(object), dtype=text)
        _remove_saved_indexes(path)  # they index the embeddings the file held before
        self.__dict__["_source"] = (path, id(self.embeddings))
        return path

    @classmethod
    def load(cls, path: Union[str, Path]) -> "ReferenceStore":
        """Read a store written by :meth:`save`.

        Raises ``FileNotFoundError`` for a missing file and :class:`ReferenceStoreError` (naming the file)
        for one that is not HDF5, truncated, lacks a required entry or holds inconsistent arrays.

        The embeddings and expression of a store :meth:`save` wrote are memory-mapped from the file
        (copy-on-write; read into memory on Windows): the store holds the file open while it lives, and the
        file must not be rewritten in place meanwhile. stgraph never does (``save`` writes a new file and
        renames it over the old one, which leaves a loaded store intact).
        """
        import h5py

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"reference store not found: {path}")
        try:
            with h5py.File(path, "r") as f:
                fields = _read_fields(f, path)
        except ReferenceStoreError:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as err:
            raise ReferenceStoreError(f"{path}: cannot read the reference store "
                                      f"(corrupt, truncated or not HDF5): {err}") from err
        try:
            store = cls(**fields)
        except ValueError as err:
            raise ReferenceStoreError(f"{path}: inconsistent reference store: {err}") from err
        store.__dict__["_source"] = (path, id(store.embeddings))
        return store

    # -- growth -------------------------------------------------------------------------------------
    def extend(self, embeddings, expression, genes: Sequence[str], slide_ids, spot_ids) -> "ReferenceStore":
        """A new store with these rows appended (e.g. a new slide, with no retraining).

        Parameters
        ----------
        embeddings
            (n, d) embeddings from the same model branch as the store's.
        expression
            (n, G) expression, dense or sparse.
        genes
            The G gene names of ``expression``'s columns; they must equal the store's genes, in the same
            order.
        slide_ids, spot_ids
            (n,) ids; a single string for ``slide_ids`` applies to all rows. Slides already in the store
            are refused.
        """
        genes = [str(g) for g in genes]
        if genes != self.genes:
            raise ValueError(_gene_mismatch_message(self.genes, genes))
        emb = _as_embeddings(embeddings)
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise ValueError(f"new embeddings must be (n, {self.dim}), got shape {emb.shape}")
        expr = _as_expression(expression)
        if expr.ndim != 2 or expr.shape != (emb.shape[0], self.n_genes):
            raise ValueError(f"new expression must be ({emb.shape[0]}, {self.n_genes}), got shape {expr.shape}")
        new_slides = _as_str_array(slide_ids, emb.shape[0], "slide_ids")
        already = sorted(str(s) for s in set(new_slides) & set(self.slide_ids))
        if already:
            raise ValueError(f"slide(s) {already} are already in the reference store")
        if self.is_sparse:
            expression_all = sp.vstack([self.expression, sp.csr_matrix(expr)], format="csr")
        else:
            expression_all = np.concatenate([self.expression, expr.toarray() if sp.issparse(expr) else expr])
        return ReferenceStore(
            embeddings=np.concatenate([self.embeddings, emb]),
            expression=expression_all,
            genes=list(self.genes),
            slide_ids=np.concatenate([self.slide_ids, new_slides]),
            spot_ids=np.concatenate([self.spot_ids, _as_str_array(spot_ids, emb.shape[0], "spot_ids")]),
            kind=self.kind,
            meta=dict(self.meta),
        )

    # -- prediction ---------------------------------------------------------------------------------
    def predict(self, query_emb, k: int = 50, similarity: Optional[str] = None, aggregation: str = "mean",
                backend: Union[str, KNNBackend] = "auto", **kwargs: Any):
        """(Q, G) float32 expression of the queries (Q, d) by kNN imputation over this store.

        Arguments are those of :func:`stgraph.retrieval.impute.impute` (``chunk_size``, ``show_progress``,
        ``return_indices``, ``temperature``, ``distance``, ``aggregation_options``, ``backend_options``,
        ``similarity_options`` via ``kwargs``). ``similarity=None`` means the backend instance's similarity
        when ``backend`` is one, else ``meta['similarity']``, else 'cosine'.
        """
        if similarity is None and not isinstance(backend, KNNBackend):
            similarity = self.meta.get("similarity") or "cosine"
        if isinstance(backend, str):
            backend = self.fitted_backend(backend, similarity, kwargs.get("chunk_size", 4096),
                                          kwargs.pop("backend_options", None), kwargs.pop("similarity_options", None))
        return impute(query_emb, self.embeddings, self.expression, k=k, similarity=similarity,
                      aggregation=aggregation, backend=backend, **kwargs)

    def predict_configured(self, query_emb, icfg, k: Optional[int] = None, similarity: Optional[str] = None,
                           aggregation: Optional[str] = None, backend: Optional[str] = None):
        """:meth:`predict` with a config's ``inference`` settings (``icfg``), any of ``k``, ``similarity``,
        ``aggregation``, ``backend`` replacing the configured one (a component's ``*_options`` belong to the
        configured component: one chosen here instead gets its defaults). Returns ``(prediction (Q, G),
        settings used)``."""
        k = icfg.k if k is None else k
        options = retrieval_options(icfg, similarity, aggregation, backend)
        similarity = similarity or icfg.similarity
        aggregation = aggregation or icfg.aggregation
        backend = backend or icfg.backend
        k_eff = min(int(k), self.n_spots)
        pred = self.predict(query_emb, k=k_eff, similarity=similarity, aggregation=aggregation, backend=backend,
                            chunk_size=icfg.chunk_size, distance=icfg.distance, **options)
        return pred, {"k": k_eff, "similarity": similarity, "aggregation": aggregation, "distance": icfg.distance,
                      "backend": backend}

    def fitted_backend(self, name: str, similarity: str = "cosine", chunk_size: int = 4096,
                       backend_options=None, similarity_options=None) -> KNNBackend:
        """The kNN backend ``name`` fitted on these embeddings, built once and kept: predicting many slides
        (or many chunks) against one store builds an approximate index only the first time. The cache is
        keyed by the arguments and dropped when ``embeddings`` is replaced."""
        import json

        settings = json.dumps([backend_options or {}, similarity_options or {}], sort_keys=True, default=repr)
        key = (name, similarity, int(chunk_size), settings, id(self.embeddings), self.embeddings.shape)
        cache = self.__dict__.setdefault("_fitted_backends", {})
        if key not in cache:
            cache.clear()  # one index at a time: a second, unused one would only hold memory
            cache[key] = self._saved_or_built(name, similarity, chunk_size, backend_options, similarity_options)
        return cache[key]

    def embeddings_digest(self) -> str:
        """SHA-256 of the embeddings' shape and bytes (hex), computed once per embeddings array."""
        memo = self.__dict__.get("_digest")
        if memo is None or memo[0] != id(self.embeddings):
            h = hashlib.sha256(repr(self.embeddings.shape).encode())
            h.update(np.ascontiguousarray(self.embeddings, dtype=np.float32).data)
            memo = (id(self.embeddings), h.hexdigest())
            self.__dict__["_digest"] = memo
        return memo[1]

    def index_path(self, backend: FaissKNN) -> Optional[Path]:
        """Where ``backend``'s index for these embeddings is kept: ``<file>.<key>.faiss`` beside the file the
        store was loaded from (``None`` for a store built in memory, or one whose embeddings were replaced)."""
        source = self.__dict__.get("_source")
        if source is None or source[1] != id(self.embeddings):
            return None
        key = hashlib.sha256(self._index_identity(backend).encode()).hexdigest()[:20]
        return source[0].with_name(f"{source[0].name}.{key}.faiss")

    def _index_identity(self, backend: FaissKNN) -> str:
        """What a saved index is built from: the embeddings' digest and the backend's settings (recorded in
        the index file and checked when it is read)."""
        return self.embeddings_digest() + json.dumps(backend.settings(), sort_keys=True)

    def _saved_or_built(self, name: str, similarity: str, chunk_size: int, backend_options=None,
                        similarity_options=None) -> KNNBackend:
        kwargs = {"chunk_size": chunk_size, **dict(backend_options or {})}
        if similarity_options:
            kwargs["similarity_options"] = dict(similarity_options)
        backend = create_knn_backend(name, similarity=similarity or "cosine", **kwargs)
        path = self.index_path(backend) if isinstance(backend, FaissKNN) else None
        if path is None:
            return resolve_backend(backend, similarity, chunk_size, self.embeddings)
        if path.is_file() and not path.is_symlink():
            try:
                return backend.read_index(path, self.n_spots, self.dim, identity=self._index_identity(backend))
            except (RuntimeError, ValueError, OSError) as err:
                # another run's index, overwritten, damaged or of another shape: never used, rebuilt below
                import logging

                logging.getLogger("stgraph").info("saved kNN index not used (%s): rebuilding it", err)
        backend.fit(self.embeddings)
        try:
            with atomic_path(path) as tmp:
                backend.write_index(tmp, identity=self._index_identity(backend))
            _remove_saved_indexes(path.with_name(_store_name(path)),
                                  keep=path)
        except OSError:
            pass  # a read-only run folder: the index lives in memory only
        return backend

    def to_anndata(self):
        """An AnnData: ``X`` = expression, ``obsm['X_emb']`` = embeddings, ``obs`` slide_id / spot_id."""
        import anndata
        import pandas as pd

        index = self.spot_ids if len(set(self.spot_ids)) == self.n_spots else np.char.add(
            np.char.add(self.slide_ids, ":"), self.spot_ids)
        obs = pd.DataFrame({"slide_id": pd.Categorical(self.slide_ids), "spot_id": self.spot_ids},
                           index=pd.Index(index, dtype=str))
        adata = anndata.AnnData(X=self.expression.copy(), obs=obs, var=pd.DataFrame(index=pd.Index(self.genes)))
        adata.obsm[Key.obsm.reference_embedding] = self.embeddings.copy()
        adata.uns[Key.uns.reference] = {"kind": self.kind, "meta": json.dumps(self.meta)}
        return adata


def retrieval_options(icfg, similarity: Optional[str] = None, aggregation: Optional[str] = None,
                      backend: Optional[str] = None) -> dict:
    """The ``inference.*_options`` of the configured similarity, aggregation and backend, for those not
    replaced by another choice (``--similarity`` etc.), as keyword arguments of :func:`impute`."""
    out = {}
    for key, chosen, configured, options in (
            ("similarity_options", similarity, icfg.similarity, icfg.similarity_options),
            ("aggregation_options", aggregation, icfg.aggregation, icfg.aggregation_options),
            ("backend_options", backend, icfg.backend, icfg.backend_options)):
        if options and (chosen is None or chosen == configured):
            out[key] = dict(options)
    return out


_INDEX_NAME = re.compile(r"^(?P<store>.+)\.(?P<key>[0-9a-f]{20})\.faiss$")


def saved_index_store(name: str) -> Optional[str]:
    """The store file name a saved kNN index file name belongs to (``reference.h5`` for
    ``reference.h5.<20 hex>.faiss``), else ``None``."""
    m = _INDEX_NAME.match(name)
    return m.group("store") if m else None


def _store_name(index_path: Path) -> str:
    """``reference.h5`` from ``reference.h5.<key>.faiss``."""
    return index_path.name[: -len(".faiss")].rsplit(".", 1)[0]


def _remove_saved_indexes(store_path: Path, keep: Optional[Path] = None) -> None:
    """Delete the saved kNN indexes of the store at ``store_path`` (``<name>.<20 hex>.faiss``), but ``keep``."""
    for p in store_path.parent.glob(f"{store_path.name}.*.faiss"):
        if p != keep and saved_index_store(p.name) == store_path.name and p.is_file() and not p.is_symlink():
            try:
                os.remove(p)
            except OSError:
                pass


def _gene_mismatch_message(have: list[str], got: list[str]) -> str:
    if len(have) != len(got):
        return f"genes differ from the reference store's: {len(got)} given, the store has {len(have)}"
    first = next(i for i, (a, b) in enumerate(zip(have, got)) if a != b)
    return (f"genes differ from the reference store's (same order required): position {first} is "
            f"{got[first]!r}, the store has {have[first]!r}")


def _read_strings(f, key: str) -> np.ndarray:
    return np.asarray(f[key].asstr()[()], dtype=str).reshape(-1)


def _read_array(dset, path: Path) -> np.ndarray:
    """A numeric dataset's values, memory-mapped copy-on-write when HDF5 keeps them contiguous and unfiltered
    (the layout :meth:`ReferenceStore.save` writes without compression); read otherwise.

    Mapping costs nothing up front: pages come from the page cache as they are used, where reading a 1e5-spot
    reference into fresh memory spends most of its time faulting in new pages. Copy-on-write (``MAP_PRIVATE``)
    makes the array writable without ever writing to the file; a store replaced later (``save`` writes a new
    file and renames it) leaves the mapped one intact. A file shorter than the dataset's extent is refused."""
    offset = dset.id.get_offset()
    native = dset.dtype.isnative
    if (offset is None or dset.chunks is not None or dset.compression is not None or dset.size == 0
            or dset.dtype.kind not in "fiu" or not native or os.name == "nt"):  # Windows locks mapped files
        return dset[()]
    end = offset + dset.size * dset.dtype.itemsize
    if end > os.path.getsize(path):
        raise ReferenceStoreError(f"{path}: truncated: {dset.name} ends at byte {end}, the file has "
                                  f"{os.path.getsize(path)}")
    return np.memmap(path, dtype=dset.dtype, mode="c", offset=offset, shape=dset.shape).view(np.ndarray)


def _read_fields(f, path: Path) -> dict:
    """The constructor arguments from an open HDF5 file; ReferenceStoreError on a malformed one."""
    if f.attrs.get("format") != FORMAT_NAME:
        raise ReferenceStoreError(f"{path}: not a stgraph reference store (format attribute is "
                                  f"{f.attrs.get('format')!r})")
    missing = [key for key in REQUIRED_KEYS if key not in f]
    if missing:
        raise ReferenceStoreError(f"{path}: reference store lacks {missing}")
    if int(f.attrs.get("version", 0)) > FORMAT_VERSION:
        raise ReferenceStoreError(f"{path}: reference store version {f.attrs['version']} is newer than this "
                                  f"stgraph reads ({FORMAT_VERSION})")
    import h5py

    node = f["expression"]
    if isinstance(node, h5py.Group):
        shape = tuple(int(s) for s in node.attrs["shape"])
        expression = sp.csr_matrix((_read_array(node["data"], path), _read_array(node["indices"], path),
                                    _read_array(node["indptr"], path)), shape=shape)
        expression.check_format(full_check=True)
    else:
        expression = _read_array(node, path)
    return dict(
        embeddings=_read_array(f["embeddings"], path),
        expression=expression,
        genes=list(_read_strings(f, "genes")),
        slide_ids=_read_strings(f, "slide_ids"),
        spot_ids=_read_strings(f, "spot_ids"),
        kind=str(f.attrs.get("kind", "spot")),
        meta=json.loads(f.attrs.get("meta", "{}")),
    )
