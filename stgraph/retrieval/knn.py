"""Nearest-neighbour search over a reference of embeddings, with interchangeable backends.

Every backend answers the same question: for each query row, the ``k`` reference rows that are closest
under a similarity from :data:`SIMILARITIES`. A similarity is a function ``(query (Q, d), reference (R, d))
-> (Q, R)`` scores, with ``larger_is_closer`` (default true) saying which way is near; a new one is one
decorated function (:func:`similarity`), and its extra keyword parameters are its options
(``inference.similarity_options``). Only :class:`TorchKNN` searches with any similarity; faiss has the
three built-in ones:

========== ===================================================== ============================
similarity score returned for query ``q`` and reference ``r``     order of the ``k`` columns
========== ===================================================== ============================
``cosine`` ``q·r / (‖q‖ ‖r‖)`` (both sides L2-normalised)            descending (best first)
``dot``    ``q·r``                                                descending (best first)
``l2``     Euclidean distance ``‖q − r‖``                          ascending (best first)
========== ===================================================== ============================

Column 0 is therefore always the nearest neighbour. :class:`TorchKNN` is exact and needs nothing beyond
torch; :class:`FaissKNN` wraps faiss-cpu (exact ``flat`` or approximate ``ivf`` / ``hnsw`` indexes) for
large references. The default backend ``auto`` (:func:`auto_knn_backend`) is faiss with ``index='auto'``
when faiss imports and the search runs on the CPU (exact ``flat`` below :data:`AUTO_IVF_MIN_REFERENCE`
reference rows, ``ivf`` from there on), and exact :class:`TorchKNN` otherwise.
"""
from __future__ import annotations

import abc
import logging
import math
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

import functools
from typing import Callable, Mapping

from ..registry import Registry

log = logging.getLogger(__name__)

__all__ = ["SIMILARITIES", "KNN_BACKENDS", "KNNBackend", "TorchKNN", "FaissKNN", "auto_knn_backend",
           "create_knn_backend", "similarity", "resolve_similarity", "stable_top_k", "AUTO_IVF_MIN_REFERENCE",
           "TIE_CANDIDATES"]

#: name → similarity function ``(query (Q, d), reference (R, d)) -> (Q, R)`` (see :func:`similarity`).
SIMILARITIES: Registry[torch.Tensor] = Registry("similarity", inputs=("query", "reference"))
#: name → :class:`KNNBackend` subclass or factory (``auto``, ``torch``, ``faiss``); its parameters other
#: than the inputs stgraph passes are its options (``inference.backend_options``).
KNN_BACKENDS: Registry["KNNBackend"] = Registry("kNN backend",
                                                inputs=("similarity", "similarity_options", "chunk_size"))

ArrayLike = Union[np.ndarray, torch.Tensor]


def similarity(larger_is_closer: bool = True, prepare: Optional[Callable] = None, key: Optional[Callable] = None,
               finalize: Optional[Callable] = None, faiss_metric: Optional[str] = None,
               to_distance: Optional[Callable] = None):
    """Decorator describing a similarity function ``fn(query (Q, d), reference (R, d)) -> (Q, R)``.

    Parameters
    ----------
    larger_is_closer
        True for similarities (cosine, dot), false for distances (l2, a user's manhattan).
    prepare, key, finalize
        A faster equivalent for blockwise search: each side is ``prepare``-d once, ``key(q, r)`` (Q, R) is
        larger for nearer rows, and ``finalize`` turns the chosen keys back into ``fn``'s scores. Without
        them the search calls ``fn`` per block (negated when ``larger_is_closer`` is false).
    faiss_metric
        ``"inner_product"`` or ``"l2"`` (with ``prepare`` applied first) when a faiss index computes it;
        ``None``: only :class:`TorchKNN` searches with it.
    to_distance
        ``scores (Q, k) ndarray -> Euclidean distances``, when the scores determine one (aggregations
        weighted by distance use it when no distances are given).
    """
    def decorate(fn):
        fn.larger_is_closer = bool(larger_is_closer)
        fn.prepare, fn.key, fn.finalize = prepare, key, finalize
        fn.faiss_metric, fn.to_distance = faiss_metric, to_distance
        return fn

    return decorate


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=1)


def _inner(q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    return q @ r.T


def _neg_sq_l2(q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    # ‖q − r‖² = ‖q‖² + ‖r‖² − 2 q·r; negated so that topk(largest) finds the nearest.
    return 2 * (q @ r.T) - (q ** 2).sum(1)[:, None] - (r ** 2).sum(1)[None, :]


def _sqrt_neg(v: torch.Tensor) -> torch.Tensor:
    return (-v).clamp_min(0).sqrt()


@SIMILARITIES.register("cosine")
@similarity(prepare=_normalize, key=_inner, faiss_metric="inner_product",
            to_distance=lambda s: np.sqrt(np.maximum(2.0 - 2.0 * s, 0.0)))
def cosine(query: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """q·r / (‖q‖ ‖r‖), both sides L2-normalised; higher is nearer."""
    return _normalize(query) @ _normalize(reference).T


@SIMILARITIES.register("dot")
@similarity(key=_inner, faiss_metric="inner_product")
def dot(query: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """q·r, the raw inner product; higher is nearer."""
    return query @ reference.T


@SIMILARITIES.register("l2")
@similarity(larger_is_closer=False, key=_neg_sq_l2, finalize=_sqrt_neg, faiss_metric="l2",
            to_distance=lambda s: s)
def l2(query: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Euclidean distance ‖q − r‖; lower is nearer."""
    return _sqrt_neg(_neg_sq_l2(query, reference))


_SPEC = ("larger_is_closer", "prepare", "key", "finalize", "faiss_metric", "to_distance")


def resolve_similarity(name, options: Optional[Mapping] = None) -> tuple[str, Callable]:
    """``(name, function)`` for a registered similarity name (with its ``options`` bound) or a function."""
    if callable(name):
        fn, name = name, getattr(name, "__name__", "custom")
        options = dict(options or {})
    else:
        fn = SIMILARITIES.get(name)
        options = SIMILARITIES.check_options(name, options, where=f"similarity {name!r}")
    if options:
        bound = functools.partial(fn, **options)
        # Options change the scores, so the fast paths and the faiss metric of the bare function no longer hold.
        for attr in _SPEC:
            setattr(bound, attr, None)
        bound.larger_is_closer = getattr(fn, "larger_is_closer", True)
        fn = bound
    return name, fn


#: Spare candidates every search asks its backend for, so that a group of exactly tied scores at the k-th
#: place is resolved by reference row (:func:`stable_top_k`) rather than by the top-k kernel.
TIE_CANDIDATES = 8


def stable_top_k(scores: torch.Tensor, indices: torch.Tensor, k: int,
                 larger_is_closer: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best of each row's candidates, ordered by score (best first) and, among exactly equal
    scores, by reference row (lowest first): (Q, c), (Q, c) → (Q, k), (Q, k) with ``k <= c``.

    Candidates padded by faiss (index ``-1``) sort last.
    """
    key = -scores if larger_is_closer else scores
    key = torch.where(indices < 0, torch.full_like(key, float("inf")), key)
    # Two stable sorts: by row, then by score, so equal scores keep the row order.
    by_row = torch.argsort(indices, dim=1, stable=True)
    order = torch.gather(by_row, 1, torch.argsort(torch.gather(key, 1, by_row), dim=1, stable=True))[:, :k]
    return torch.gather(scores, 1, order), torch.gather(indices, 1, order)


def check_similarity(similarity: str) -> str:
    return similarity if callable(similarity) else SIMILARITIES.check(similarity)


def as_float32_matrix(x: ArrayLike, name: str) -> torch.Tensor:
    """A finite (n, d) float32 CPU tensor from a tensor or array-like; clear errors otherwise."""
    t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n, d) matrix, got shape {tuple(t.shape)}")
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64, torch.int16, torch.int8)):
        raise ValueError(f"{name} must hold numbers, got dtype {t.dtype}")
    t = t.to(torch.float32).contiguous()
    if not all_finite(t.numpy()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def all_finite(x: np.ndarray) -> bool:
    """Whether every value of a float32 (or narrower) array is finite, with no full-size temporary.

    The float64 sum is finite exactly when every value is: a NaN or an infinity propagates (``inf - inf`` is
    NaN), and finite float32 values cannot overflow a float64 sum (:math:`3.4 \\cdot 10^{38} \\cdot n \\ll
    1.8 \\cdot 10^{308}`). A mask (``np.isfinite(x).all()``) allocates one byte per value, which on a large
    reference costs more than the check itself."""
    x = np.asarray(x)
    if x.dtype.kind != "f" or x.dtype.itemsize > 4:
        return bool(np.isfinite(x).all())
    with np.errstate(invalid="ignore", over="ignore"):
        return bool(np.isfinite(np.sum(x, dtype=np.float64)))


class KNNBackend(abc.ABC):
    """Exact or approximate k-nearest-neighbour search.

    Use: ``backend.fit(reference)`` once, then ``backend.search(query, k)`` as often as needed.

    Attributes
    ----------
    similarity : str
        Name of the similarity (:data:`SIMILARITIES`). The returned score is the similarity function's
        value; the ``k`` columns are sorted nearest first (descending for cosine and dot, ascending for l2's
        Euclidean distance, not squared).
    similarity_fn : callable
        The similarity function itself (with its options bound).
    """

    similarity: str = "cosine"

    def __init__(self, similarity: str = "cosine", similarity_options: Optional[Mapping] = None):
        self.similarity, self.similarity_fn = resolve_similarity(similarity, similarity_options)
        self.similarity_options = dict(similarity_options or {})
        self._n_reference: Optional[int] = None
        self._dim: Optional[int] = None

    @property
    def n_reference(self) -> Optional[int]:
        """Rows of the fitted reference (``None`` before :meth:`fit`)."""
        return self._n_reference

    @property
    def dim(self) -> Optional[int]:
        """Embedding dimension of the fitted reference (``None`` before :meth:`fit`)."""
        return self._dim

    @property
    def larger_is_closer(self) -> bool:
        """True for similarities (cosine, dot), false for distances (l2)."""
        return bool(getattr(self.similarity_fn, "larger_is_closer", True))

    def fit(self, reference: ArrayLike) -> "KNNBackend":
        """Index the reference embeddings, shape (R, d). Returns ``self``."""
        ref = as_float32_matrix(reference, "reference embeddings")
        if ref.shape[0] == 0:
            raise ValueError("the reference is empty (0 rows)")
        self._n_reference, self._dim = int(ref.shape[0]), int(ref.shape[1])
        self._fit(ref)
        return self

    def search(self, query: ArrayLike, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` nearest reference rows of every query row.

        Parameters
        ----------
        query
            (Q, d) tensor or array.
        k
            Neighbours per query, ``1 <= k <= R``.

        Returns
        -------
        scores : torch.Tensor
            (Q, k) float32 on the CPU: the similarity function's scores, nearest first (descending when
            ``larger_is_closer``, e.g. cosine/dot; ascending otherwise, e.g. l2's Euclidean distance).
        indices : torch.Tensor
            (Q, k) int64 row numbers into the reference.
        """
        if self._n_reference is None:
            raise RuntimeError(f"{type(self).__name__}.search called before fit()")
        q = as_float32_matrix(query, "query embeddings")
        if q.shape[1] != self._dim:
            raise ValueError(f"query embeddings have dimension {q.shape[1]}, the reference has {self._dim}")
        k = int(k)
        if not 1 <= k <= self._n_reference:
            raise ValueError(f"k must be between 1 and the reference size {self._n_reference}, got {k}")
        if q.shape[0] == 0:
            return torch.empty(0, k, dtype=torch.float32), torch.empty(0, k, dtype=torch.int64)
        # A few spare candidates, then a stable order by (score, reference row): reference rows with exactly
        # equal scores (duplicated embeddings) are taken lowest row first, whatever order the backend's
        # top-k kernel (which differs between CPUs and libraries) returned them in.
        extra = min(TIE_CANDIDATES, self._n_reference - k)
        scores, indices = stable_top_k(*self._search(q, k + extra), k, self.larger_is_closer)
        if (indices < 0).any():
            raise RuntimeError(self._too_few_message(k))
        return scores, indices

    def _too_few_message(self, k: int) -> str:
        return f"{type(self).__name__} found fewer than k={k} neighbours for some queries"

    @abc.abstractmethod
    def _fit(self, reference: torch.Tensor) -> None:
        """Index a validated (R, d) float32 CPU tensor."""

    @abc.abstractmethod
    def _search(self, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Search a validated (Q, d) float32 CPU tensor."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(similarity={self.similarity!r}, n_reference={self._n_reference})"


@KNN_BACKENDS.register("torch")
class TorchKNN(KNNBackend):
    """Exact search with dense matrix products and ``torch.topk``.

    The (Q, R) score matrix is never formed whole: queries are taken ``chunk_size`` rows at a time and the
    reference ``reference_chunk_size`` rows at a time, and a running top-k is merged across reference
    chunks. Peak working memory is about ``4 · chunk_size · reference_chunk_size`` bytes (64 MiB with the
    defaults), so a 1e5-spot reference against a 1e4-spot query fits in a few hundred MB.

    Parameters
    ----------
    similarity
        A :data:`SIMILARITIES` name: 'cosine' (both sides L2-normalised, then dot product), 'dot', 'l2' or
        a registered one; ``similarity_options`` are its options.
    chunk_size
        Query rows per block.
    reference_chunk_size
        Reference rows per block; defaults to ``chunk_size``.
    device
        Where the products run ('cpu', 'cuda', ...); results always come back on the CPU.
    """

    def __init__(self, similarity: str = "cosine", chunk_size: int = 4096,
                 reference_chunk_size: Optional[int] = None, device: Union[str, torch.device] = "cpu",
                 similarity_options: Optional[Mapping] = None):
        super().__init__(similarity, similarity_options)
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = int(chunk_size)
        self.reference_chunk_size = int(reference_chunk_size or chunk_size)
        if self.reference_chunk_size < 1:
            raise ValueError(f"reference_chunk_size must be >= 1, got {reference_chunk_size}")
        self.device = torch.device(device)
        self._reference: Optional[torch.Tensor] = None

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        prepare = getattr(self.similarity_fn, "prepare", None)
        return prepare(x) if prepare is not None else x

    def _fit(self, reference: torch.Tensor) -> None:
        self._reference = self._prepare(reference)

    def _block_scores(self, q: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """(c, stop-start) block where larger means closer (e.g. negative squared distance for l2)."""
        key = getattr(self.similarity_fn, "key", None)
        if key is not None:
            return key(q, self._reference[start:stop])
        block = self.similarity_fn(q, self._reference[start:stop])
        return block if self.larger_is_closer else -block

    def _finalize(self, keys: torch.Tensor) -> torch.Tensor:
        """The similarity's scores of the chosen keys."""
        if getattr(self.similarity_fn, "key", None) is not None:
            finalize = getattr(self.similarity_fn, "finalize", None)
            return finalize(keys) if finalize is not None else keys
        return keys if self.larger_is_closer else -keys

    def _search_chunk(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        best_val = best_idx = None
        n_ref = self._reference.shape[0]
        for start in range(0, n_ref, self.reference_chunk_size):
            stop = min(start + self.reference_chunk_size, n_ref)
            block = self._block_scores(q, start, stop)
            val, idx = torch.topk(block, min(k, stop - start), dim=1)
            idx = idx + start
            if best_val is not None:
                # Merge the running top-k with this block's; both are small (c, k).
                candidates = torch.cat([best_val, val], 1)
                val, pos = torch.topk(candidates, min(k, candidates.shape[1]), dim=1)
                idx = torch.gather(torch.cat([best_idx, idx], 1), 1, pos)
            best_val, best_idx = val, idx
        return self._finalize(best_val), best_idx

    @torch.no_grad()
    def _search(self, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        scores, indices = [], []
        for start in range(0, query.shape[0], self.chunk_size):
            q = self._prepare(query[start:start + self.chunk_size])
            val, idx = self._search_chunk(q, k)
            scores.append(val.cpu())
            indices.append(idx.cpu())
        return torch.cat(scores), torch.cat(indices).to(torch.int64)


def import_faiss():
    """``import faiss`` with an actionable message when it is missing."""
    try:
        import faiss
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the 'faiss' kNN backend needs faiss: `pip install faiss-cpu` "
                          "(or `pip install stgraph[faiss]`), or use backend='torch'") from err
    return faiss


def faiss_available() -> bool:
    """Whether ``import faiss`` succeeds."""
    try:
        import_faiss()
    except ImportError:
        return False
    return True


FAISS_INDEXES = ("flat", "ivf", "hnsw", "auto")
#: With ``index='auto'``, references of at least this many rows get an IVF index, smaller ones an exact flat
#: one. Exact search of 1e4 queries costs about 1e4 · R · d multiply-adds: below 5e4 rows that is a few
#: seconds at most on 2 cores, and every reference that stgraph's accuracy figures use stays exact.
AUTO_IVF_MIN_REFERENCE = 50_000


@KNN_BACKENDS.register("faiss")
class FaissKNN(KNNBackend):
    """Search with a faiss-cpu index (exact flat, IVF or HNSW) for cosine, dot or l2 similarity.

    ``cosine`` uses an inner-product index over L2-normalised vectors, ``dot`` an inner-product index,
    ``l2`` an L2 index (faiss returns squared distances; they are converted to distances). A similarity
    without a faiss metric (a plugin's) is refused: use the torch backend.

    Parameters
    ----------
    similarity
        'cosine', 'dot' or 'l2'.
    index
        'flat' (exact, ``IndexFlatIP`` / ``IndexFlatL2``), 'ivf' (``IndexIVFFlat``: k-means into ``nlist``
        cells, searches the ``nprobe`` nearest cells; approximate), 'hnsw' (``IndexHNSWFlat`` graph with
        ``M`` links per node, ``ef_search`` candidates; approximate) or 'auto' ('flat' for references of
        fewer than ``ivf_min_reference`` rows, 'ivf' otherwise; :attr:`resolved_index` says which).
    nlist
        IVF cells; default ``round(sqrt(R))``, capped so every cell has >= 39 training points.
    nprobe
        IVF cells searched per query (recall/speed trade-off). With 16 of the ``sqrt(R)`` cells of a 1e5
        reference, recall@50 against exact search is 1.0 on clustered embeddings and about 0.8 on a
        structureless 16-dimensional manifold (``benchmarks/knn_imputation.py``).
    max_points_per_centroid, niter
        IVF k-means: training uses at most ``max_points_per_centroid · nlist`` rows (a seeded random subset)
        and ``niter`` iterations, so building the index stays a small part of a search (about 0.6 s for 1e5
        rows of 256 dimensions on 2 cores).
    ivf_min_reference
        Reference rows from which ``index='auto'`` builds an IVF index.
    M, ef_construction, ef_search
        HNSW graph degree and candidate-list sizes (``ef_search`` is raised to ``k`` when smaller).
    seed
        Seed of the IVF k-means, so indexes are reproducible.
    """

    def __init__(self, similarity: str = "cosine", index: str = "flat", nlist: Optional[int] = None,
                 nprobe: int = 16, M: int = 32, ef_construction: int = 80, ef_search: int = 64, seed: int = 0,
                 max_points_per_centroid: int = 32, niter: int = 5,
                 ivf_min_reference: int = AUTO_IVF_MIN_REFERENCE, similarity_options: Optional[Mapping] = None):
        super().__init__(similarity, similarity_options)
        if getattr(self.similarity_fn, "faiss_metric", None) is None:
            raise ValueError(f"the faiss kNN backend has no index for similarity {self.similarity!r} (faiss "
                             "searches cosine, dot and l2): use inference.backend=torch")
        if index not in FAISS_INDEXES:
            raise ValueError(f"unknown faiss index {index!r}; choose one of {list(FAISS_INDEXES)}")
        self.faiss = import_faiss()
        self.index_type = index
        self.nlist, self.nprobe, self.M = nlist, int(nprobe), int(M)
        self.ef_construction, self.ef_search, self.seed = int(ef_construction), int(ef_search), int(seed)
        self.max_points_per_centroid, self.niter = int(max_points_per_centroid), int(niter)
        self.ivf_min_reference = int(ivf_min_reference)
        #: The index actually built: ``index`` itself, or what 'auto' chose for the fitted reference.
        self.resolved_index: Optional[str] = None if index == "auto" else index
        self.index = None

    @property
    def _is_l2(self) -> bool:
        return self.similarity_fn.faiss_metric == "l2"

    def _metric(self):
        return self.faiss.METRIC_L2 if self._is_l2 else self.faiss.METRIC_INNER_PRODUCT

    def _as_faiss_input(self, x: torch.Tensor) -> np.ndarray:
        prepare = getattr(self.similarity_fn, "prepare", None)
        if prepare is not None:
            x = prepare(x)
        return np.ascontiguousarray(x.numpy(), dtype=np.float32)

    def _default_nlist(self, n: int) -> int:
        return max(1, min(int(round(math.sqrt(n))), n // 39))

    def _resolve_index(self, n: int) -> str:
        if self.index_type != "auto":
            return self.index_type
        return "ivf" if n >= self.ivf_min_reference else "flat"

    def _build(self, d: int, n: int):
        faiss = self.faiss
        self.resolved_index = self._resolve_index(n)
        if self.resolved_index == "flat":
            return faiss.IndexFlatL2(d) if self._is_l2 else faiss.IndexFlatIP(d)
        if self.resolved_index == "ivf":
            nlist = int(self.nlist or self._default_nlist(n))
            if not 1 <= nlist <= n:
                raise ValueError(f"nlist must be between 1 and the reference size {n}, got {nlist}")
            quantizer = faiss.IndexFlatL2(d) if self._is_l2 else faiss.IndexFlatIP(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist, self._metric())
            index.cp.seed = self.seed
            index.cp.max_points_per_centroid = self.max_points_per_centroid
            index.cp.niter = self.niter
            index.nprobe = min(self.nprobe, nlist)
            return index
        index = faiss.IndexHNSWFlat(d, self.M, self._metric())
        index.hnsw.efConstruction = self.ef_construction
        return index

    def _fit(self, reference: torch.Tensor) -> None:
        x = self._as_faiss_input(reference)
        self.index = self._build(x.shape[1], x.shape[0])
        log.debug("kNN: faiss %s index over %d reference rows (d = %d, %s)", self.resolved_index, x.shape[0],
                  x.shape[1], self.similarity)
        if not self.index.is_trained:
            self.index.train(x)
        self.index.add(x)

    def settings(self) -> dict:
        """What shapes the built index (with the reference itself, the key of a saved index)."""
        return {"backend": "faiss", "similarity": self.similarity, "index": self.index_type, "nlist": self.nlist,
                "nprobe": self.nprobe, "M": self.M, "ef_construction": self.ef_construction, "seed": self.seed,
                "max_points_per_centroid": self.max_points_per_centroid, "niter": self.niter,
                "ivf_min_reference": self.ivf_min_reference, "faiss": getattr(self.faiss, "__version__", "")}

    #: First bytes of a saved index: stgraph's header (identity and checksum), then faiss's own bytes.
    INDEX_MAGIC = b"STGRAPH-FAISS-1\n"

    def write_index(self, path, identity: str = "") -> None:
        """Write the built index to ``path`` (the caller makes it atomic): a header naming ``identity`` (what
        the index was built from: the embeddings' digest and the settings) and the SHA-256 of faiss's bytes,
        then those bytes (``faiss.serialize_index``)."""
        import hashlib
        import json

        if self.index is None:
            raise RuntimeError("FaissKNN.write_index called before fit()")
        payload = self.faiss.serialize_index(self.index).tobytes()
        header = json.dumps({"identity": identity, "sha256": hashlib.sha256(payload).hexdigest(),
                             "bytes": len(payload)}).encode()
        with open(path, "wb") as fh:
            fh.write(self.INDEX_MAGIC + len(header).to_bytes(8, "little") + header)
            fh.write(payload)

    def read_index(self, path, n_reference: int, dim: int, identity: str = "") -> "FaissKNN":
        """Use the index saved at ``path`` for an (``n_reference``, ``dim``) reference instead of building one.
        Raises ``ValueError`` when the file is not one :meth:`write_index` wrote for ``identity`` (another
        run's index, an earlier format), when its bytes fail their checksum (overwritten or damaged), or when
        it holds another shape of index: the caller rebuilds it."""
        import hashlib
        import json

        with open(path, "rb") as fh:
            data = fh.read()
        magic = self.INDEX_MAGIC
        if not data.startswith(magic) or len(data) < len(magic) + 8:
            raise ValueError(f"{path}: not an index stgraph saved")
        size = int.from_bytes(data[len(magic):len(magic) + 8], "little")
        try:
            header = json.loads(data[len(magic) + 8:len(magic) + 8 + size])
        except ValueError:
            raise ValueError(f"{path}: damaged index header") from None
        payload = memoryview(data)[len(magic) + 8 + size:]  # a view: no second copy of the index
        if header.get("identity") != identity:
            raise ValueError(f"{path}: built from other embeddings or settings")
        if len(payload) != header.get("bytes") or hashlib.sha256(payload).hexdigest() != header.get("sha256"):
            raise ValueError(f"{path}: its bytes fail their checksum (overwritten or damaged)")
        index = self.faiss.deserialize_index(np.frombuffer(payload, dtype=np.uint8))
        if (int(index.ntotal), int(index.d)) != (int(n_reference), int(dim)):
            raise ValueError(f"{path}: index of {index.ntotal} × {index.d}, the reference is {n_reference} × {dim}")
        self.resolved_index = self._resolve_index(int(n_reference))
        if self.resolved_index == "ivf":
            index.nprobe = min(self.nprobe, int(index.nlist))
        self.index = index
        self._n_reference, self._dim = int(n_reference), int(dim)
        return self

    #: Fewest queries for which :meth:`_search` groups the queries by IVF cell first.
    GROUP_QUERIES_FROM = 512

    def _cell_order(self, x: np.ndarray) -> Optional[np.ndarray]:
        """The queries' order grouped by nearest IVF cell (``None`` when not an IVF index or few queries).
        The index repeats this coarse search with ``nprobe`` cells; handing it over (``search_preassigned``)
        was measured slower, as that path parallelises less."""
        if self.resolved_index != "ivf" or len(x) < self.GROUP_QUERIES_FROM:
            return None
        _, cell = self.index.quantizer.search(x, 1)
        return np.argsort(cell[:, 0], kind="stable")

    def _too_few_message(self, k: int) -> str:
        return (f"faiss {self.resolved_index} index found fewer than k={k} neighbours for some queries; raise "
                "nprobe (ivf) / ef_search (hnsw) or use index='flat'")

    def _search(self, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to ``k`` neighbours; missing ones (an approximate index that found fewer) have index -1."""
        if self.resolved_index == "hnsw":
            self.index.hnsw.efSearch = max(self.ef_search, k)
        x = self._as_faiss_input(query)
        order = self._cell_order(x)
        if order is None:
            scores, indices = self.index.search(x, k)
        else:
            # queries grouped by their nearest IVF cell: each thread scans lists its previous queries left
            # in cache (the same neighbours per query, about twice as fast on a 1e5-row reference)
            scores, indices = np.empty((len(x), k), np.float32), np.empty((len(x), k), np.int64)
            scores[order], indices[order] = self.index.search(x[order], k)
        if self._is_l2:
            scores = np.sqrt(np.maximum(scores, 0))
        return torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32)), torch.from_numpy(
            indices.astype(np.int64))


@KNN_BACKENDS.register("auto")
def auto_knn_backend(similarity: str = "cosine", chunk_size: int = 4096, reference_chunk_size: Optional[int] = None,
                     device: Union[str, torch.device] = "cpu", index: str = "auto", nlist: Optional[int] = None,
                     nprobe: int = 16, M: int = 32, ef_construction: int = 80, ef_search: int = 64, seed: int = 0,
                     max_points_per_centroid: int = 32, niter: int = 5,
                     ivf_min_reference: int = AUTO_IVF_MIN_REFERENCE,
                     similarity_options: Optional[Mapping] = None) -> KNNBackend:
    """Faiss (exact below 5e4 reference rows, IVF above) on the CPU when installed, else exact torch search.

    :class:`FaissKNN` with ``index='auto'`` when faiss imports, ``device`` is the CPU and the similarity has
    a faiss metric (the faiss options go to it), else the exact :class:`TorchKNN` (``chunk_size``,
    ``reference_chunk_size``, ``device`` go to it).
    """
    _, fn = resolve_similarity(similarity, similarity_options)
    if torch.device(device).type == "cpu" and getattr(fn, "faiss_metric", None) and faiss_available():
        log.debug("kNN backend auto → faiss (flat below %d reference rows, IVF above)", ivf_min_reference)
        return FaissKNN(similarity, index=index, nlist=nlist, nprobe=nprobe, M=M, ef_construction=ef_construction,
                        ef_search=ef_search, seed=seed, max_points_per_centroid=max_points_per_centroid,
                        niter=niter, ivf_min_reference=ivf_min_reference, similarity_options=similarity_options)
    log.debug("kNN backend auto → exact torch search on %s (%s)", device,
              "faiss is not installed" if not faiss_available() else
              "the similarity has no faiss index" if not getattr(fn, "faiss_metric", None) else
              "faiss runs on the CPU only")
    return TorchKNN(similarity, chunk_size=chunk_size, reference_chunk_size=reference_chunk_size, device=device,
                    similarity_options=similarity_options)


def create_knn_backend(name: str = "auto", similarity: str = "cosine", **kwargs) -> KNNBackend:
    """A backend by name from :data:`KNN_BACKENDS` ('auto' → :func:`auto_knn_backend`, 'torch' →
    :class:`TorchKNN`, 'faiss' → :class:`FaissKNN`); ``kwargs`` go to it (``chunk_size`` and
    ``similarity_options`` only when it takes them)."""
    for given in ("chunk_size", "similarity_options"):
        if given in kwargs and not KNN_BACKENDS.takes(name, given):
            kwargs.pop(given)
    options = {k: v for k, v in kwargs.items() if k not in KNN_BACKENDS.inputs}
    KNN_BACKENDS.check_options(name, options, where=f"kNN backend {name!r}")
    return KNN_BACKENDS.create(name, similarity=similarity, **kwargs)
