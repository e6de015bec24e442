"""kNN backends and kNN imputation: planted structure, exactness, backend agreement, hand-computed weights."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from stgraph.retrieval.impute import aggregate, impute, neighbour_distances, neighbour_weights
from stgraph.retrieval.impute import AGGREGATIONS
from stgraph.retrieval.knn import KNN_BACKENDS, SIMILARITIES
from stgraph.retrieval.knn import FaissKNN, KNNBackend, TorchKNN, create_knn_backend

SIMILARITIES = SIMILARITIES.names()
AGGREGATIONS = AGGREGATIONS.names()
BACKENDS = KNN_BACKENDS.names()

pytest.importorskip("faiss", reason="faiss-cpu is not installed")


def planted_clusters(n_clusters=5, per_cluster=30, dim=8, n_genes=6, noise=0.3, seed=0):
    """Clusters around orthogonal centres 10·e_c (equal norms, so dot, cosine and l2 agree on the nearest
    cluster), each with its own expression profile; returns embeddings, labels, expression, profiles."""
    rng = np.random.default_rng(seed)
    centres = 10.0 * np.eye(dim)[:n_clusters]
    labels = np.repeat(np.arange(n_clusters), per_cluster)
    emb = centres[labels] + noise * rng.standard_normal((len(labels), dim))
    profiles = rng.uniform(0, 5, (n_clusters, n_genes)) + 10 * np.eye(n_clusters, n_genes)
    expr = profiles[labels] + 0.01 * rng.standard_normal((len(labels), n_genes))
    return emb.astype(np.float32), labels, expr.astype(np.float32), profiles, centres


def unit_norm_embeddings(n=60, dim=16, scale=3.0, seed=1):
    """Rows of equal norm: the only case where a vector's best dot-product match is itself."""
    x = np.random.default_rng(seed).standard_normal((n, dim))
    return (scale * x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_queries_near_a_cluster_retrieve_that_cluster_and_its_profile(similarity, backend):
    emb, labels, expr, profiles, centres = planted_clusters()
    rng = np.random.default_rng(5)
    query_labels = np.tile(np.arange(5), 4)
    queries = (centres[query_labels] + 0.3 * rng.standard_normal((len(query_labels), emb.shape[1]))).astype(
        np.float32)
    pred, idx = impute(queries, emb, expr, k=10, similarity=similarity, backend=backend, return_indices=True)
    assert idx.shape == (len(queries), 10)
    np.testing.assert_array_equal(labels[idx], np.repeat(query_labels[:, None], 10, axis=1))
    np.testing.assert_allclose(pred, profiles[query_labels], atol=0.05)
    # the nearest profile is the query's cluster's and no other
    dist = np.linalg.norm(pred[:, None, :] - profiles[None], axis=2)
    np.testing.assert_array_equal(dist.argmin(1), query_labels)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_k1_self_query_returns_own_profiles_exactly(similarity, aggregation, backend):
    emb = unit_norm_embeddings()
    expr = np.random.default_rng(2).uniform(0, 9, (len(emb), 7)).astype(np.float32)
    pred, idx = impute(emb, emb, expr, k=1, similarity=similarity, aggregation=aggregation, backend=backend,
                       return_indices=True)
    np.testing.assert_array_equal(idx[:, 0], np.arange(len(emb)))
    np.testing.assert_array_equal(pred, expr)


@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_torch_and_faiss_flat_agree(similarity):
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((300, 16)).astype(np.float32)
    query = rng.standard_normal((40, 16)).astype(np.float32)
    t_scores, t_idx = TorchKNN(similarity).fit(ref).search(query, 12)
    f_scores, f_idx = FaissKNN(similarity, index="flat").fit(ref).search(query, 12)
    assert t_idx.dtype == f_idx.dtype == torch.int64
    torch.testing.assert_close(t_idx, f_idx, rtol=0, atol=0)
    torch.testing.assert_close(t_scores, f_scores, rtol=0, atol=1e-5)


@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_scores_are_the_documented_quantity_in_the_documented_order(similarity):
    rng = np.random.default_rng(4)
    ref = rng.standard_normal((50, 5))
    query = rng.standard_normal((3, 5))
    scores, idx = TorchKNN(similarity).fit(ref).search(query, 50)
    if similarity == "cosine":
        full = (query / np.linalg.norm(query, axis=1, keepdims=True)) @ (
            ref / np.linalg.norm(ref, axis=1, keepdims=True)).T
    elif similarity == "dot":
        full = query @ ref.T
    else:
        full = np.linalg.norm(query[:, None] - ref[None], axis=2)
    np.testing.assert_allclose(scores.numpy(), np.take_along_axis(full, idx.numpy(), 1), atol=1e-5)
    steps = np.diff(scores.numpy(), axis=1)
    assert (steps >= 0).all() if similarity == "l2" else (steps <= 0).all()
    expected_order = np.argsort(full if similarity == "l2" else -full, axis=1)
    np.testing.assert_array_equal(idx.numpy(), expected_order)


@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_chunking_does_not_change_results(similarity):
    rng = np.random.default_rng(6)
    ref = rng.standard_normal((100, 8)).astype(np.float32)
    query = rng.standard_normal((30, 8)).astype(np.float32)
    expr = rng.uniform(0, 3, (100, 4)).astype(np.float32)
    small = TorchKNN(similarity, chunk_size=7).fit(ref)  # 5 query blocks × 15 reference blocks
    large = TorchKNN(similarity, chunk_size=4096).fit(ref)
    s_scores, s_idx = small.search(query, 9)
    l_scores, l_idx = large.search(query, 9)
    torch.testing.assert_close(s_idx, l_idx, rtol=0, atol=0)
    torch.testing.assert_close(s_scores, l_scores, rtol=0, atol=1e-6)
    for aggregation in AGGREGATIONS:
        a = impute(query, ref, expr, k=9, similarity=similarity, aggregation=aggregation, chunk_size=7)
        b = impute(query, ref, expr, k=9, similarity=similarity, aggregation=aggregation, chunk_size=4096)
        # float32 products summed in another order differ in the last bits; softmax(s / 0.1) magnifies that
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_reference_chunk_smaller_than_k_still_finds_the_true_top_k():
    rng = np.random.default_rng(7)
    ref = rng.standard_normal((50, 4))
    query = rng.standard_normal((6, 4))
    _, idx = TorchKNN("l2", chunk_size=2, reference_chunk_size=3).fit(ref).search(query, 20)
    expected = np.argsort(np.linalg.norm(query[:, None] - ref[None], axis=2), axis=1)[:, :20]
    np.testing.assert_array_equal(idx.numpy(), expected)


# -- aggregation, computed by hand ------------------------------------------------------------------------

NEIGHBOURS = np.array([[[21.0, 0.0], [0.0, 21.0], [21.0, 21.0]]])  # (Q=1, k=3, G=2)


def test_inverse_square_by_hand_l2():
    # d = 1, 2, 4 → d^-2 = 1, 1/4, 1/16 → w = 16/21, 4/21, 1/21
    out = aggregate(NEIGHBOURS, np.array([[1.0, 2.0, 4.0]]), "inverse_square", "l2")
    np.testing.assert_allclose(out, [[16 + 1, 4 + 1]], rtol=1e-6)


def test_inverse_square_by_hand_cosine():
    # cos = 0.5, 0, -1 → d² = 2 − 2cos = 1, 2, 4 → w ∝ 1, 1/2, 1/4 = 4/7, 2/7, 1/7
    w = neighbour_weights(np.array([[0.5, 0.0, -1.0]]), "inverse_square", "cosine")
    np.testing.assert_allclose(w, [[4 / 7, 2 / 7, 1 / 7]], rtol=1e-9)
    out = aggregate(NEIGHBOURS, np.array([[0.5, 0.0, -1.0]]), "inverse_square", "cosine")
    np.testing.assert_allclose(out, [[21 * 5 / 7, 21 * 3 / 7]], rtol=1e-6)


def test_inverse_square_by_hand_dot_through_impute():
    # q = (2, 0); r = (1, 0), (2, 2), (0, 4): d² = 1, 4, 20; q·r = 2, 4, 0 so the dot ranking is r2, r1, r3
    query = np.array([[2.0, 0.0]])
    ref = np.array([[1.0, 0.0], [2.0, 2.0], [0.0, 4.0]])
    expr = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    pred, idx = impute(query, ref, expr, k=3, similarity="dot", aggregation="inverse_square",
                       return_indices=True)
    np.testing.assert_array_equal(idx, [[1, 0, 2]])
    w = np.array([1.0, 1 / 4, 1 / 20]) / (1 + 1 / 4 + 1 / 20)
    np.testing.assert_allclose(pred, [w @ expr], rtol=1e-6)


def test_inverse_square_exact_match_dominates_without_dividing_by_zero():
    w = neighbour_weights(np.array([[0.0, 1.0, 2.0]]), "inverse_square", "l2")
    assert np.isfinite(w).all() and w[0, 0] > 1 - 1e-9


def test_softmax_by_hand():
    # cosine scores 1, 0 with T = 1: w = e/(e+1), 1/(e+1)
    w = neighbour_weights(np.array([[1.0, 0.0]]), "softmax", "cosine", temperature=1.0)
    np.testing.assert_allclose(w, [[math.e / (math.e + 1), 1 / (math.e + 1)]], rtol=1e-9)
    # l2 distances 0, ln 3 with T = 1: softmax(−d) ∝ 1, 1/3 → 3/4, 1/4
    out = aggregate(np.array([[[4.0, 0.0], [0.0, 4.0]]]), np.array([[0.0, math.log(3)]]), "softmax", "l2",
                    temperature=1.0)
    np.testing.assert_allclose(out, [[3.0, 1.0]], rtol=1e-6)
    # a lower temperature sharpens towards the best neighbour
    sharp = neighbour_weights(np.array([[1.0, 0.0]]), "softmax", "dot", temperature=0.01)
    assert sharp[0, 0] > 0.999


def test_top1_and_mean_by_hand():
    scores = np.array([[0.9, 0.8, 0.1]])
    np.testing.assert_allclose(aggregate(NEIGHBOURS, scores, "top1"), [[21.0, 0.0]])
    np.testing.assert_allclose(aggregate(NEIGHBOURS, scores, "mean"), [[14.0, 14.0]])


def test_dot_scores_without_distances_are_refused_for_distance_weights():
    for aggregation in ("inverse_square", "bleep_weighted"):
        with pytest.raises(ValueError, match="dot-product scores do not determine a distance"):
            neighbour_weights(np.array([[1.0, 0.5]]), aggregation, "dot")


def test_weighting_distance_is_measured_between_raw_embeddings():
    # Neighbours are chosen by cosine, weighted by a distance between the un-normalised embeddings, as in
    # the reference codes. q = (3, 0); r0 = (1, 0) [cos 1], r1 = (3, 1) [cos 0.949], r2 = (0, 2) [cos 0].
    query = np.array([[3.0, 0.0]])
    ref = np.array([[1.0, 0.0], [3.0, 1.0], [0.0, 2.0]])
    expr = np.eye(3)  # the prediction is then the weight vector itself
    expected = {
        "euclidean": np.array([1 / 4, 1, 1 / 13]),  # d² = 4, 1, 13
        "manhattan": np.array([1 / 4, 1, 1 / 25]),  # d = 2, 1, 5
    }
    for distance, inv in expected.items():
        pred, idx = impute(query, ref, expr, k=3, similarity="cosine", aggregation="inverse_square",
                           distance=distance, return_indices=True)
        np.testing.assert_array_equal(idx, [[0, 1, 2]])
        np.testing.assert_allclose(pred, [inv / inv.sum()], rtol=1e-6)
    # between normalised vectors r0 coincides with q (d = 0), so it takes all the weight
    pred = impute(query, ref, expr, k=3, aggregation="inverse_square", distance="normalized_euclidean")
    np.testing.assert_allclose(pred, [[1.0, 0.0, 0.0]], atol=1e-9)
    # BLEEP's weighted variant on the same neighbours: w ∝ exp(−(d² − d²_min + 1)), d² = 4, 1, 13
    pred = impute(query, ref, expr, k=3, aggregation="bleep_weighted")
    w = np.exp(-(np.array([4.0, 1.0, 13.0]) - 1.0 + 1.0))
    np.testing.assert_allclose(pred, [w / w.sum()], rtol=1e-6)


def test_neighbour_distances_match_numpy():
    rng = np.random.default_rng(8)
    query, ref = rng.standard_normal((7, 5)), 3 * rng.standard_normal((20, 5))
    idx = rng.integers(0, 20, (7, 4))
    diff = ref[idx] - query[:, None]
    np.testing.assert_allclose(neighbour_distances(query, ref, idx, "euclidean"),
                               np.linalg.norm(diff, axis=2), rtol=1e-6)
    np.testing.assert_allclose(neighbour_distances(query, ref, idx, "manhattan"), np.abs(diff).sum(2), rtol=1e-6)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(neighbour_distances(query, ref, idx, "normalized_euclidean"),
                               np.linalg.norm(unit(ref[idx]) - unit(query)[:, None], axis=2), rtol=1e-5)
    assert (neighbour_distances(ref[:3], ref, np.array([[0], [1], [2]])) == 0).all()
    with pytest.raises(ValueError, match="unknown distance 'cityblock'"):
        neighbour_distances(query, ref, idx, "cityblock")


def test_bleep_weighted_by_hand():
    # l2 distances 1, √2, 2 → d² = 1, 2, 4 → w ∝ e^-1, e^-2, e^-4 (BLEEP's shift by d²_min − 1 cancels)
    w = neighbour_weights(np.array([[1.0, math.sqrt(2), 2.0]]), "bleep_weighted", "l2")
    e = np.exp([-1.0, -2.0, -4.0])
    np.testing.assert_allclose(w, [e / e.sum()], rtol=1e-9)
    # explicit distances override what the scores imply
    w = neighbour_weights(np.array([[0.9, 0.1]]), "bleep_weighted", "dot", distances=np.array([[0.0, 1.0]]))
    np.testing.assert_allclose(w, [[1 / (1 + math.exp(-1)), math.exp(-1) / (1 + math.exp(-1))]], rtol=1e-9)


def test_aggregate_from_indices_and_reference_expression():
    reference_expr = np.array([[0.0, 21.0], [5.0, 5.0], [21.0, 0.0], [21.0, 21.0]])
    indices = np.array([[2, 0, 3]])  # the rows of NEIGHBOURS
    scores = np.array([[1.0, 2.0, 4.0]])
    by_rows = aggregate(NEIGHBOURS, scores, "inverse_square", "l2")
    np.testing.assert_allclose(aggregate(None, scores, "inverse_square", "l2", indices=indices,
                                         reference_expr=reference_expr), by_rows, rtol=1e-6)
    np.testing.assert_allclose(aggregate(None, scores, similarity="l2", method="inverse_square", indices=indices,
                                         reference_expr=sp.csr_matrix(reference_expr)), by_rows, rtol=1e-6)
    with pytest.raises(ValueError, match="indices must lie in"):
        aggregate(None, scores, indices=np.array([[2, 0, 4]]), reference_expr=reference_expr)
    with pytest.raises(ValueError, match="needs neighbour_expr"):
        aggregate(None, scores)


# -- inputs, errors, approximate indexes -----------------------------------------------------------------

def test_sparse_dense_and_tensor_expression_give_the_same_prediction():
    emb, _, expr, _, _ = planted_clusters()
    query = emb[::7] + 0.1
    dense = impute(query, emb, expr, k=8, aggregation="inverse_square")
    np.testing.assert_allclose(impute(query, emb, sp.csr_matrix(expr), k=8, aggregation="inverse_square"),
                               dense, atol=1e-6)
    np.testing.assert_allclose(impute(torch.from_numpy(query), torch.from_numpy(emb), torch.from_numpy(expr),
                                      k=8, aggregation="inverse_square"), dense, atol=1e-6)
    assert dense.dtype == np.float32 and dense.shape == (len(query), expr.shape[1])


def test_k_larger_than_reference_is_clamped_with_a_warning():
    emb = unit_norm_embeddings(n=5)
    expr = np.arange(10, dtype=np.float32).reshape(5, 2)
    with pytest.warns(UserWarning, match="k=50 is larger than the reference"):
        pred, idx = impute(emb[:2], emb, expr, k=50, return_indices=True)
    assert idx.shape == (2, 5)
    np.testing.assert_allclose(pred, np.tile(expr.mean(0), (2, 1)), rtol=1e-6)


def test_bad_inputs_raise_clear_errors():
    emb = unit_norm_embeddings(n=10, dim=4)
    expr = np.ones((10, 3), np.float32)
    with pytest.raises(ValueError, match=r"unknown kNN backend 'annoy'; valid choices"):
        create_knn_backend("annoy")
    with pytest.raises(ValueError, match="unknown similarity"):
        TorchKNN("manhattan")
    with pytest.raises(ValueError, match="unknown aggregation"):
        impute(emb, emb, expr, k=2, aggregation="median")
    with pytest.raises(ValueError, match="dimension 3, the reference has 4"):
        impute(emb[:, :3], emb, expr, k=2)
    with pytest.raises(ValueError, match="9 rows but there are 10"):
        impute(emb, emb, expr[:9], k=2)
    with pytest.raises(ValueError, match="NaN"):
        impute(np.full((1, 4), np.nan), emb, expr, k=2)
    with pytest.raises(ValueError, match="differs from the backend's 'l2'"):
        impute(emb, emb, expr, k=2, similarity="cosine", backend=TorchKNN("l2"))
    with pytest.raises(RuntimeError, match="before fit"):
        TorchKNN().search(emb, 1)
    with pytest.raises(ValueError, match="unknown faiss index"):
        FaissKNN(index="lsh")


def test_a_fitted_backend_instance_is_reused():
    emb, labels, expr, _, _ = planted_clusters()
    knn = create_knn_backend("faiss", similarity="l2", index="ivf", nlist=4, nprobe=4).fit(emb)
    assert isinstance(knn, KNNBackend) and knn.n_reference == len(emb)
    a = impute(emb, emb, expr, k=1, backend=knn)  # similarity comes from the instance
    np.testing.assert_array_equal(a, expr)
    with pytest.raises(ValueError, match="fitted on a"):
        impute(emb, emb[:10], expr[:10], k=1, backend=knn)


@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_ivf_probing_every_cell_is_exact_and_hnsw_recalls_planted_clusters(similarity):
    emb, labels, _, _, _ = planted_clusters(per_cluster=60)
    _, exact = FaissKNN(similarity, index="flat").fit(emb).search(emb[:40], 5)
    _, ivf = FaissKNN(similarity, index="ivf", nlist=4, nprobe=4).fit(emb).search(emb[:40], 5)
    torch.testing.assert_close(ivf, exact, rtol=0, atol=0)
    _, hnsw = FaissKNN(similarity, index="hnsw", M=8).fit(emb).search(emb, 5)
    assert (labels[hnsw.numpy()] == labels[:, None]).all()


def test_auto_backend_is_faiss_when_it_imports_and_exact_flat_for_small_references():
    emb, _, expr, _, _ = planted_clusters()
    knn = create_knn_backend("auto", similarity="cosine").fit(emb)
    assert isinstance(knn, FaissKNN) and knn.resolved_index == "flat"
    t_scores, t_idx = TorchKNN("cosine").fit(emb).search(emb[:20], 7)
    f_scores, f_idx = knn.search(emb[:20], 7)
    torch.testing.assert_close(f_idx, t_idx, rtol=0, atol=0)
    # the default of impute and of the config is 'auto'
    import inspect
    from stgraph.config.schema import InferenceConfig
    assert inspect.signature(impute).parameters["backend"].default == "auto"
    assert InferenceConfig().backend == "auto"


def test_auto_backend_falls_back_to_exact_torch_when_faiss_cannot_be_imported(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss" or name.startswith("faiss."):
            raise ImportError("faiss blocked by the test")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    emb, _, expr, _, _ = planted_clusters()
    knn = create_knn_backend("auto", similarity="l2", chunk_size=7)
    assert type(knn) is TorchKNN and knn.chunk_size == 7
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        create_knn_backend("faiss")
    pred = impute(emb, emb, expr, k=1, similarity="l2")  # the default backend still works without faiss
    np.testing.assert_array_equal(pred, expr)


def test_auto_backend_on_an_accelerator_is_torch():
    knn = create_knn_backend("auto", device="meta")
    assert type(knn) is TorchKNN


def clustered_embeddings(n, n_clusters=60, dim=32, spread=0.35, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim))
    return (centres[rng.integers(0, n_clusters, n)] + spread * rng.standard_normal((n, dim))).astype(np.float32)


@pytest.mark.parametrize("similarity", ["cosine", "l2"])
def test_auto_index_switches_to_ivf_on_large_references_and_recalls_the_exact_neighbours(similarity):
    ref = clustered_embeddings(6000)
    query = clustered_embeddings(300, seed=1)
    k = 20
    _, exact = FaissKNN(similarity, index="flat").fit(ref).search(query, k)
    ivf = create_knn_backend("auto", similarity=similarity, ivf_min_reference=5000).fit(ref)
    assert ivf.resolved_index == "ivf" and ivf.index.nlist == round(math.sqrt(len(ref)))
    assert ivf.index.nprobe == 16  # the default
    scores, approx = ivf.search(query, k)
    hits = [len(set(a) & set(b)) for a, b in zip(approx.numpy(), exact.numpy())]
    recall = np.mean(hits) / k
    assert recall >= 0.95, recall
    # scores keep their meaning and order: the IVF neighbours are never better than the exact ones
    order = -1 if similarity == "l2" else 1
    assert (order * np.diff(scores.numpy(), axis=1) <= 1e-6).all()
    # the same reference below the threshold stays exact
    small = create_knn_backend("auto", similarity=similarity, ivf_min_reference=6001).fit(ref)
    assert small.resolved_index == "flat"
    torch.testing.assert_close(small.search(query, k)[1], exact, rtol=0, atol=0)


@pytest.mark.parametrize("similarity", ["cosine", "l2"])
def test_queries_grouped_by_ivf_cell_get_exactly_the_neighbours_of_an_ungrouped_search(similarity, monkeypatch):
    ref = clustered_embeddings(3000)
    query = clustered_embeddings(700, seed=2)
    ivf = FaissKNN(similarity, index="ivf", nlist=40, nprobe=3).fit(ref)
    assert ivf._cell_order(ivf._as_faiss_input(torch.from_numpy(query))) is not None  # grouped at this size
    scores, rows = ivf.search(query, 10)
    monkeypatch.setattr(FaissKNN, "GROUP_QUERIES_FROM", 10 ** 9)
    assert ivf._cell_order(ivf._as_faiss_input(torch.from_numpy(query))) is None
    plain_scores, plain_rows = ivf.search(query, 10)
    # nprobe 3 of 40 is approximate: equal results can only come from giving each query its own answer back
    torch.testing.assert_close(rows, plain_rows, rtol=0, atol=0)
    torch.testing.assert_close(scores, plain_scores, rtol=0, atol=0)
    _, exact = FaissKNN(similarity, index="flat").fit(ref).search(query, 10)
    assert not torch.equal(rows, exact)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_all_finite_agrees_with_an_elementwise_check(dtype):
    from stgraph.retrieval.knn import all_finite

    big = np.full((1000, 50), np.finfo(dtype).max, dtype=dtype)  # finite, and its float32 sum would overflow
    assert all_finite(big) and all_finite(np.zeros((0, 3), dtype))
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones((30, 7), dtype)
        x[17, 3] = bad
        assert not all_finite(x)
    both = np.ones(10, dtype)
    both[[2, 5]] = [np.inf, -np.inf]
    assert not all_finite(both)


def test_reference_store_builds_its_index_once_and_predicts_like_a_fresh_backend():
    from stgraph.retrieval.reference import ReferenceStore

    emb, labels, expr, _, _ = planted_clusters()
    store = ReferenceStore(embeddings=emb, expression=expr, genes=[f"g{i}" for i in range(expr.shape[1])],
                           slide_ids=np.repeat("s", len(emb)), spot_ids=np.arange(len(emb)).astype(str))
    a = store.predict(emb[:30], k=5)
    first = store.fitted_backend("auto", "cosine")
    b = store.predict(emb[30:60], k=5)
    assert store.fitted_backend("auto", "cosine") is first  # reused, not rebuilt
    np.testing.assert_allclose(a, impute(emb[:30], emb, expr, k=5, backend="torch"), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(b, impute(emb[30:60], emb, expr, k=5, backend="torch"), rtol=1e-6, atol=1e-6)
    assert store.fitted_backend("torch", "l2") is not first
    store.embeddings = emb[::-1].copy()  # a replaced reference gets a new index
    assert store.fitted_backend("auto", "cosine") is not first


# ------------------------------------------------------------------------- registries of functions
# q = [1, 1]: r0 = [4, 1] is nearest in L1 (3 vs 4), r1 = [3, 3] in L2 (2.83 vs 3) and by dot (6 vs 5).
_Q = np.array([[1.0, 1.0]], dtype=np.float32)
_R = np.array([[4.0, 1.0], [3.0, 3.0], [-5.0, -5.0]], dtype=np.float32)
_EXPR = np.array([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]], dtype=np.float32)


@pytest.fixture
def manhattan_similarity():
    from stgraph.retrieval.knn import SIMILARITIES as REGISTRY
    from stgraph.retrieval.knn import similarity

    @REGISTRY.register("test_manhattan")
    @similarity(larger_is_closer=False)
    def test_manhattan(query, reference):
        """L1 distance; lower is nearer."""
        return torch.cdist(query, reference, p=1)

    @REGISTRY.register("test_minkowski")
    @similarity(larger_is_closer=False)
    def test_minkowski(query, reference, p: float = 2.0):
        """Minkowski distance of order p."""
        return torch.cdist(query, reference, p=p)

    yield
    REGISTRY.unregister("test_manhattan")
    REGISTRY.unregister("test_minkowski")


def test_a_registered_similarity_is_the_one_searched_with(manhattan_similarity):
    knn = TorchKNN("test_manhattan").fit(_R)
    scores, idx = knn.search(_Q, 2)
    assert idx[0].tolist() == [0, 1] and scores[0].tolist() == pytest.approx([3.0, 4.0])
    assert TorchKNN("dot").fit(_R).search(_Q, 1)[1][0, 0] == 1 and TorchKNN("l2").fit(_R).search(_Q, 1)[1][0, 0] == 1
    pred = impute(_Q, _R, _EXPR, k=1, similarity="test_manhattan", backend="auto")
    assert pred[0].tolist() == [1.0, 0.0]  # auto falls back to torch: faiss has no L1 index
    with pytest.raises(ValueError, match="faiss.*test_manhattan.*backend=torch"):
        FaissKNN("test_manhattan")


def test_similarity_options_change_the_neighbours(manhattan_similarity):
    by_p = {p: impute(_Q, _R, _EXPR, k=1, similarity="test_minkowski", similarity_options={"p": p},
                      backend="torch")[0].tolist() for p in (1.0, 2.0)}
    assert by_p == {1.0: [1.0, 0.0], 2.0: [0.0, 1.0]}
    with pytest.raises(ValueError, match="'test_minkowski' has no option.*\\['q'\\].*accepts \\['p'\\]"):
        impute(_Q, _R, _EXPR, k=1, similarity="test_minkowski", similarity_options={"q": 1}, backend="torch")


def test_a_registered_aggregation_gets_what_it_declares():
    from stgraph.retrieval.impute import AGGREGATIONS as REGISTRY

    seen = {}

    @REGISTRY.register("test_nearest_by_distance")
    def nearest_by_distance(scores, distances, larger_is_closer, power: float = 1.0):
        """All weight on the neighbour at the smallest distance."""
        seen.update(distances=distances.copy(), larger=larger_is_closer, power=power)
        w = np.zeros(scores.shape)
        w[np.arange(len(w)), distances.argmin(1)] = 1.0
        return w

    try:
        # Dot-product neighbours (r1 first, then r0); dot scores imply no distance, so impute must compute
        # the configured L1 distances itself: r0 is nearer in L1, so its profile wins.
        pred = impute(_Q, _R, _EXPR, k=2, similarity="dot", aggregation="test_nearest_by_distance",
                      distance="manhattan", backend="torch", aggregation_options={"power": 3.0})
        assert pred[0].tolist() == [1.0, 0.0]
        assert seen["distances"][0].tolist() == pytest.approx([4.0, 3.0]) and seen["larger"] is True
        assert seen["power"] == 3.0
    finally:
        REGISTRY.unregister("test_nearest_by_distance")


def test_a_registered_distance_is_the_one_measured():
    from stgraph.retrieval.impute import WEIGHT_DISTANCES

    @WEIGHT_DISTANCES.register("test_chebyshev")
    def chebyshev(query, neighbours):
        """max_i |q_i − r_i|."""
        return (neighbours - query).abs().amax(dim=2).double()

    try:
        d = neighbour_distances(_Q, _R, np.array([[0, 1, 2]]), "test_chebyshev")
        assert d[0].tolist() == pytest.approx([3.0, 2.0, 6.0])
    finally:
        WEIGHT_DISTANCES.unregister("test_chebyshev")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_exactly_tied_neighbours_are_taken_lowest_reference_row_first(similarity, backend):
    """Duplicated reference rows tie exactly: which of them make the k cut is fixed (lowest row first), not
    left to the top-k kernel, whose order differs between CPUs and libraries."""
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(4, 6, generator=gen)
    # Rows 0..3 distinct; eight copies of base[0] at shuffled places among 20 rows.
    ref = torch.randn(20, 6, generator=gen) * 0.1  # small: the copies win under every similarity
    copies = torch.tensor([17, 2, 11, 5, 19, 8, 14, 13])
    ref[copies] = base[0]
    query = base[:1] + 1e-3 * torch.randn(1, 6, generator=gen)
    knn = create_knn_backend(backend, similarity=similarity).fit(ref)
    scores, idx = knn.search(query, 3)
    assert idx[0].tolist() == sorted(copies.tolist())[:3]
    assert torch.equal(scores[0], scores[0, :1].expand(3))


def test_stable_top_k_orders_by_score_then_row():
    from stgraph.retrieval.knn import stable_top_k

    scores = torch.tensor([[0.5, 0.9, 0.5, 0.9, 0.1]])
    rows = torch.tensor([[7, 9, 3, 4, -1]])
    s, i = stable_top_k(scores, rows, 4)
    assert i.tolist() == [[4, 9, 3, 7]] and torch.equal(s, scores[:, [1, 1, 0, 0]])
    s, i = stable_top_k(scores, rows, 2, larger_is_closer=False)
    assert i.tolist() == [[3, 7]]  # distances: smallest first; the padded -1 never wins
