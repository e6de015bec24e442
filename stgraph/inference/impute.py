"""kNN imputation: a query spot's expression is a weighted sum of its nearest reference spots' profiles.

``prediction_q = Σ_j w_qj · expr_{n_j(q)}`` over the ``k`` nearest reference spots ``n_1(q) … n_k(q)``
(column 0 = the nearest), with weights from :func:`neighbour_weights`:

================== ========================================================================================
``mean``           ``w_j = 1 / k`` (BLEEP, HECLIP, ST-GCHB)
``inverse_square`` ``w_j = d_j^-2 / Σ_l d_l^-2`` (mclSTExp), ``d`` the Euclidean distance in the joint space
``softmax``        ``w = softmax(s / T)`` for cosine/dot scores ``s``; ``softmax(−d / T)`` for l2 distances
``top1``           ``w_1 = 1``, all others 0 (the nearest neighbour's profile)
================== ========================================================================================

The distance ``d`` of ``inverse_square`` is, by similarity:

- ``l2``: the Euclidean distance the search returns;
- ``cosine``: ``d = sqrt(2 − 2·cos)``, the Euclidean distance between the L2-normalised vectors;
- ``dot``: ``d = sqrt(max(‖q‖² + ‖r‖² − 2·q·r, 0))``, which needs the squared norms of the query and of the
  neighbours (:func:`impute` supplies them).

``d² + eps`` (``eps`` = 1e-12) replaces ``d²``, so an exact match (``d = 0``) gets an overwhelming but finite
weight instead of a division by zero.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional, Union

import numpy as np
import scipy.sparse as sp
import torch

from .knn import KNNBackend, as_float32_matrix, check_similarity, create_knn_backend

__all__ = ["AGGREGATIONS", "neighbour_weights", "aggregate", "impute"]

AGGREGATIONS = ("mean", "inverse_square", "softmax", "top1")
DEFAULT_TEMPERATURE = 0.1  # cosine scores lie in [-1, 1]; T = 1 would make softmax almost a plain mean
DEFAULT_EPS = 1e-12

ArrayLike = Union[np.ndarray, torch.Tensor]


def check_aggregation(aggregation: str) -> str:
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; choose one of {list(AGGREGATIONS)}")
    return aggregation


def _to_numpy(x, dtype=np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def squared_distances(scores: np.ndarray, similarity: str, query_sq_norms: Optional[np.ndarray] = None,
                      neighbour_sq_norms: Optional[np.ndarray] = None) -> np.ndarray:
    """Squared Euclidean distance in the joint space from search scores (Q, k); see the module docstring.

    ``query_sq_norms`` (Q,) and ``neighbour_sq_norms`` (Q, k) are needed for ``dot`` only.
    """
    if similarity == "l2":
        return scores ** 2
    if similarity == "cosine":
        return np.maximum(2.0 - 2.0 * scores, 0.0)
    if query_sq_norms is None or neighbour_sq_norms is None:
        raise ValueError("inverse_square with similarity='dot' needs query_sq_norms (Q,) and neighbour_sq_norms "
                         "(Q, k) to turn dot products into distances")
    q_sq = _to_numpy(query_sq_norms).reshape(-1, 1)
    r_sq = _to_numpy(neighbour_sq_norms)
    if r_sq.shape != scores.shape or q_sq.shape[0] != scores.shape[0]:
        raise ValueError(f"norm shapes {q_sq.shape[:1]} / {r_sq.shape} do not match scores {scores.shape}")
    return np.maximum(q_sq + r_sq - 2.0 * scores, 0.0)


def neighbour_weights(scores: ArrayLike, aggregation: str = "mean", similarity: str = "cosine",
                      temperature: float = DEFAULT_TEMPERATURE, query_sq_norms: Optional[ArrayLike] = None,
                      neighbour_sq_norms: Optional[ArrayLike] = None, eps: float = DEFAULT_EPS) -> np.ndarray:
    """Weights (Q, k), rows summing to 1, for the neighbours a search returned.

    Parameters
    ----------
    scores
        (Q, k) scores from :meth:`KNNBackend.search` (similarities for cosine/dot, distances for l2),
        nearest neighbour in column 0.
    aggregation
        'mean', 'inverse_square', 'softmax' or 'top1' (formulas in the module docstring).
    similarity
        How ``scores`` were computed: 'cosine', 'dot' or 'l2'.
    temperature
        Softmax temperature ``T``.
    query_sq_norms, neighbour_sq_norms
        ``‖q‖²`` (Q,) and ``‖r_j‖²`` (Q, k); only for ``inverse_square`` with ``dot``.
    eps
        Added to ``d²`` for ``inverse_square``.

    Returns
    -------
    np.ndarray
        (Q, k) float64.
    """
    check_aggregation(aggregation)
    check_similarity(similarity)
    s = _to_numpy(scores)
    if s.ndim != 2 or s.shape[1] == 0:
        raise ValueError(f"scores must be (Q, k) with k >= 1, got shape {s.shape}")
    n_q, k = s.shape
    if aggregation == "mean":
        return np.full((n_q, k), 1.0 / k)
    if aggregation == "top1":
        w = np.zeros((n_q, k))
        w[:, 0] = 1.0
        return w
    if aggregation == "softmax":
        if not temperature > 0:
            raise ValueError(f"softmax temperature must be > 0, got {temperature}")
        logits = (-s if similarity == "l2" else s) / temperature
        logits -= logits.max(axis=1, keepdims=True)  # stable: exp never overflows
        w = np.exp(logits)
        return w / w.sum(axis=1, keepdims=True)
    inv = 1.0 / (squared_distances(s, similarity, query_sq_norms, neighbour_sq_norms) + eps)
    return inv / inv.sum(axis=1, keepdims=True)


def aggregate(neighbour_expr: ArrayLike, scores: ArrayLike, aggregation: str = "mean",
              similarity: str = "cosine", temperature: float = DEFAULT_TEMPERATURE,
              query_sq_norms: Optional[ArrayLike] = None, neighbour_sq_norms: Optional[ArrayLike] = None,
              eps: float = DEFAULT_EPS) -> np.ndarray:
    """Combine the neighbours' profiles: ``out_q = Σ_j w_qj · neighbour_expr[q, j]``.

    Parameters
    ----------
    neighbour_expr
        (Q, k, G) expression of each query's ``k`` neighbours, in search order.
    scores
        (Q, k) search scores; the other arguments are those of :func:`neighbour_weights`.

    Returns
    -------
    np.ndarray
        (Q, G) float32.
    """
    expr = _to_numpy(neighbour_expr)
    if expr.ndim != 3:
        raise ValueError(f"neighbour_expr must be (Q, k, G), got shape {expr.shape}")
    w = neighbour_weights(scores, aggregation, similarity, temperature, query_sq_norms, neighbour_sq_norms, eps)
    if w.shape != expr.shape[:2]:
        raise ValueError(f"scores {w.shape} do not match neighbour_expr {expr.shape[:2]}")
    return np.einsum("qk,qkg->qg", w, expr).astype(np.float32)


def _expression_matrix(reference_expr, n_reference: int):
    """(R, G) float32 CSR or dense ndarray from ndarray / scipy sparse / tensor."""
    if sp.issparse(reference_expr):
        expr = sp.csr_matrix(reference_expr, dtype=np.float32)
    else:
        expr = _to_numpy(reference_expr, np.float32)
    if expr.ndim != 2:
        raise ValueError(f"reference expression must be (R, G), got shape {expr.shape}")
    if expr.shape[0] != n_reference:
        raise ValueError(f"reference expression has {expr.shape[0]} rows but there are {n_reference} "
                         "reference embeddings")
    return expr


def _resolve_backend(backend, similarity: Optional[str], chunk_size: int, reference: torch.Tensor):
    if isinstance(backend, KNNBackend):
        if similarity is not None and similarity != backend.similarity:
            raise ValueError(f"similarity={similarity!r} differs from the backend's {backend.similarity!r}")
        if backend.n_reference is None:
            backend.fit(reference)
        elif (backend.n_reference, backend.dim) != tuple(reference.shape):
            raise ValueError(f"the backend was fitted on a ({backend.n_reference}, {backend.dim}) reference, "
                             f"not this ({reference.shape[0]}, {reference.shape[1]}) one")
        return backend
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a name or a KNNBackend, got {type(backend).__name__}")
    kwargs = {"chunk_size": chunk_size} if backend == "torch" else {}
    return create_knn_backend(backend, similarity=similarity or "cosine", **kwargs).fit(reference)


def _weight_matrix(weights: np.ndarray, indices: np.ndarray, n_reference: int) -> sp.csr_matrix:
    """(c, R) float32 sparse matrix holding each query's k weights at its neighbours' columns.

    float32 matters: a float64 matrix times the float32 expression makes scipy copy the whole (R, G)
    expression to float64.
    """
    n_q, k = indices.shape
    indptr = np.arange(0, n_q * k + 1, k)
    return sp.csr_matrix((weights.ravel().astype(np.float32), indices.ravel(), indptr), shape=(n_q, n_reference))


def impute(query_emb: ArrayLike, reference_emb: ArrayLike, reference_expr, k: int = 50,
           similarity: Optional[str] = None, aggregation: str = "mean",
           backend: Union[str, KNNBackend] = "torch", chunk_size: int = 4096, show_progress: bool = False,
           return_indices: bool = False, temperature: float = DEFAULT_TEMPERATURE):
    """Predict each query's expression from its ``k`` nearest reference spots.

    Parameters
    ----------
    query_emb
        (Q, d) query embeddings (tensor or array).
    reference_emb
        (R, d) reference embeddings.
    reference_expr
        (R, G) reference expression: dense ndarray, scipy sparse (kept sparse) or tensor.
    k
        Neighbours per query; clamped to R with a warning when larger.
    similarity
        'cosine', 'dot' or 'l2'; ``None`` means the backend instance's similarity, or 'cosine'.
    aggregation
        'mean', 'inverse_square', 'softmax' or 'top1' (see the module docstring).
    backend
        'torch', 'faiss' or a :class:`~stgraph.inference.knn.KNNBackend`. An unfitted instance is fitted on
        ``reference_emb``; a fitted one is used as it is (it must have been fitted on ``reference_emb``,
        which lets an approximate index be built once and reused).
    chunk_size
        Queries per block; memory is O(chunk_size · k) for the neighbours plus the (Q, G) output.
    show_progress
        A tqdm bar over query blocks.
    return_indices
        Also return the neighbours.
    temperature
        Softmax temperature.

    Returns
    -------
    np.ndarray
        (Q, G) float32 predictions, and with ``return_indices`` also (Q, k) int64 neighbour rows (nearest
        first).
    """
    check_aggregation(aggregation)
    if similarity is not None:
        check_similarity(similarity)
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    ref = as_float32_matrix(reference_emb, "reference embeddings")
    query = as_float32_matrix(query_emb, "query embeddings")
    if query.shape[1] != ref.shape[1]:
        raise ValueError(f"query embeddings have dimension {query.shape[1]}, the reference has {ref.shape[1]}")
    expr = _expression_matrix(reference_expr, ref.shape[0])
    n_ref = ref.shape[0]
    if n_ref == 0:
        raise ValueError("the reference is empty (0 rows)")
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > n_ref:
        warnings.warn(f"k={k} is larger than the reference ({n_ref} spots); using k={n_ref}", stacklevel=2)
        k = n_ref
    knn = _resolve_backend(backend, similarity, chunk_size, ref)
    sim = knn.similarity
    ref_sq = (ref.double() ** 2).sum(1).numpy() if (aggregation == "inverse_square" and sim == "dot") else None

    n_q = query.shape[0]
    out = np.empty((n_q, expr.shape[1]), dtype=np.float32)
    all_indices = np.empty((n_q, k), dtype=np.int64) if return_indices else None
    starts = range(0, n_q, chunk_size)
    if show_progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, total=math.ceil(n_q / chunk_size), desc="kNN imputation", unit="block")
    for start in starts:
        q = query[start:start + chunk_size]
        scores, idx = knn.search(q, k)
        idx = idx.numpy()
        q_sq = (q.double() ** 2).sum(1).numpy() if ref_sq is not None else None
        w = neighbour_weights(scores, aggregation, sim, temperature, q_sq,
                              ref_sq[idx] if ref_sq is not None else None)
        # A sparse (c, R) weight matrix times the expression never materialises the (c, k, G) neighbours.
        block = _weight_matrix(w, idx, n_ref) @ expr
        out[start:start + len(q)] = block.toarray() if sp.issparse(block) else block
        if return_indices:
            all_indices[start:start + len(q)] = idx
    return (out, all_indices) if return_indices else out
