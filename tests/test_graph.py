"""Spot graphs: radius/kNN/self-loop adjacency, block-wise slides, PyG conversion, real HER2+ degrees."""
from __future__ import annotations

from pathlib import Path

import anndata
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from stgraph.data import make_synthetic_slide
from stgraph.graph import median_spacing, slide_to_pyg, spatial_graph, to_edge_index

from tests.conftest import SHARED  # noqa: E402
HER2ST = SHARED / "data" / "her2st"


def _grid(n_rows=4, n_cols=5, spacing=10.0):
    rr, cc = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    return np.stack([cc.ravel(), rr.ravel()], 1) * spacing


def _adata(xy, slide_ids=None):
    ad = anndata.AnnData(np.zeros((len(xy), 1), np.float32))
    ad.obsm["spatial"] = np.asarray(xy, dtype=float)
    if slide_ids is not None:
        ad.obs["slide_id"] = slide_ids
    return ad


def _degrees(conn):
    return np.asarray(conn.sum(1)).ravel().astype(int)


def test_median_spacing():
    assert median_spacing(_grid(spacing=32.0)) == pytest.approx(32.0)
    assert median_spacing([[0, 0], [3, 4], [100, 100]]) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="at least 2"):
        median_spacing([[0, 0]])


def test_radius_is_strict_and_counts_neighbourhoods():
    ad = _adata(_grid())  # 4 × 5 square grid, spacing 10
    assert spatial_graph(ad, radius=10.0).nnz == 0  # d < R, not ≤
    four = spatial_graph(ad, radius=10.5)
    # 4-neighbourhood: horizontal 4×4 + vertical 3×5 undirected edges, both directions stored
    assert four.nnz == 2 * (4 * 4 + 3 * 5)
    deg = _degrees(four).reshape(4, 5)
    assert deg[1:-1, 1:-1].tolist() == [[4, 4, 4], [4, 4, 4]] and deg[0, 0] == 2 and deg[0, 2] == 3
    # radius_factor 1.5 reaches the diagonals (√2 ≈ 1.41 < 1.5): 8-neighbourhood in the interior
    eight = spatial_graph(ad, radius_factor=1.5)
    assert (_degrees(eight).reshape(4, 5)[1:-1, 1:-1] == 8).all()
    assert ad.uns["spatial_neighbors"]["params"]["radius"] == pytest.approx(15.0)


def test_graph_format_and_distances():
    ad = _adata(_grid())
    conn = spatial_graph(ad, radius=10.5)
    assert sp.isspmatrix_csr(conn) and conn.dtype == np.float32
    assert set(np.unique(conn.data)) == {1.0} and (conn != conn.T).nnz == 0 and conn.diagonal().sum() == 0
    assert ad.obsp["spatial_connectivities"] is conn
    dist = ad.obsp["spatial_distances"]
    assert (dist != dist.T).nnz == 0
    np.testing.assert_allclose(dist.data, 10.0)
    np.testing.assert_array_equal((dist > 0).toarray(), conn.toarray() > 0)
    assert ad.uns["spatial_neighbors"]["connectivities_key"] == "spatial_connectivities"


def test_knn_union_and_self_loops():
    xy = np.array([[0, 0], [1, 0], [10, 0], [30, 0]], dtype=float)
    ad = _adata(xy)
    conn = spatial_graph(ad, radius=2.0, knn=1, copy=True)
    # radius links 0–1; 1-NN adds 2→1 and 3→2; symmetrised
    expected = {(0, 1), (1, 0), (1, 2), (2, 1), (2, 3), (3, 2)}
    assert set(zip(*conn.nonzero())) == expected
    assert "spatial_connectivities" not in ad.obsp  # copy=True leaves the slide untouched
    looped = spatial_graph(ad, knn=1, self_loops=True)
    np.testing.assert_array_equal(looped.diagonal(), 1.0)
    assert ad.obsp["spatial_distances"].diagonal().sum() == 0
    # no parameter: R = 1.5 × median spacing; nearest distances 1, 1, 9, 20 → median 5, R = 7.5 → only 0–1
    default = spatial_graph(ad)
    assert set(zip(*default.nonzero())) == {(0, 1), (1, 0)}
    assert ad.uns["spatial_neighbors"]["params"]["radius_factor"] == 1.5


def test_no_edge_crosses_slides():
    xy = _grid()
    ad = _adata(np.concatenate([xy, xy + 0.5]), slide_ids=["a"] * len(xy) + ["b"] * len(xy))
    ad.obs["slide_id"] = ad.obs["slide_id"].astype("category")
    conn = spatial_graph(ad, radius=10.5, knn=3)
    n = len(xy)
    assert conn[:n, n:].nnz == 0 and conn[n:, :n].nnz == 0
    single = spatial_graph(_adata(xy), radius=10.5, knn=3)
    assert (conn[:n, :n] != single).nnz == 0 and (conn[n:, n:] != single).nnz == 0
    # interleaved rows are handled too
    order = np.random.default_rng(0).permutation(2 * n)
    shuffled = ad[order].copy()
    conn2 = spatial_graph(shuffled, radius=10.5)
    slides = shuffled.obs["slide_id"].to_numpy()
    rows, cols = conn2.nonzero()
    assert (slides[rows] == slides[cols]).all() and conn2.nnz == 2 * 2 * (4 * 4 + 3 * 5)


def test_to_edge_index_and_pyg():
    ad = make_synthetic_slide(n_rows=3, n_cols=3, n_genes=4, spacing=10)
    conn = spatial_graph(ad, radius=10.5)
    ei = to_edge_index(conn)
    assert ei.dtype == torch.long and ei.shape == (2, conn.nnz)
    assert set(map(tuple, ei.T.tolist())) == set(zip(*conn.nonzero()))
    assert torch.equal(to_edge_index(conn.toarray()), ei)
    x = np.ones((9, 4), dtype=np.float32)
    data = slide_to_pyg(ad, x=x)
    assert data.num_nodes == 9 and data.x.shape == (9, 4) and data.pos.dtype == torch.float32
    assert torch.equal(data.edge_index, ei)  # reuses obsp['spatial_connectivities']
    assert slide_to_pyg(ad, knn=1).edge_index.shape[1] < ei.shape[1]
    with pytest.raises(ValueError, match="9 spots"):
        slide_to_pyg(ad, x=x[:5])


@pytest.mark.slow
def test_her2st_grid_degrees():
    """HER2+ B4 at R = 1.5 × median spacing: the jittered ~291 px grid puts diagonals (~412 px) at about
    R (~410 px), so interior spots have 4–8 neighbours; these are the real counts."""
    if not HER2ST.exists():
        pytest.skip(f"shared data not found at {HER2ST}")
    from stgraph.data.readers import read_her2st

    ad = read_her2st(HER2ST, "B4", hires_max_side=None)
    assert median_spacing(ad.obsm["spatial"]) == pytest.approx(273.03, abs=0.01)
    deg = _degrees(spatial_graph(ad, radius_factor=1.5))
    grid = set(zip(ad.obs["x"], ad.obs["y"]))
    interior = np.array([all((x + dx, y + dy) in grid for dx in (-1, 0, 1) for dy in (-1, 0, 1))
                         for x, y in zip(ad.obs["x"], ad.obs["y"])])
    assert interior.sum() == 166
    assert deg[interior].min() == 4 and deg[interior].max() == 8
    assert np.bincount(deg[interior], minlength=9)[4:].tolist() == [17, 33, 73, 33, 10]
    assert np.bincount(deg, minlength=9).tolist() == [0, 2, 5, 28, 50, 66, 88, 34, 10]


def test_a_radius_in_micrometres_reaches_the_same_tissue_distance_on_slides_of_different_pixel_sizes():
    """Two slides of one tissue layout (units 10 µm apart) imaged at 0.5 and 0.25 µm/px: a 12 µm radius links
    each unit to its 4 grid neighbours on both; the same radius in pixels would not."""
    xy_um = _grid(spacing=10.0)
    ad = _adata(np.concatenate([xy_um / 0.5, xy_um / 0.25]), ["a"] * len(xy_um) + ["b"] * len(xy_um))
    ad.uns["spatial"] = {s: {"metadata": {"microns_per_pixel": m}} for s, m in (("a", 0.5), ("b", 0.25))}
    conn = spatial_graph(ad, radius_um=12.0, copy=True)
    n = len(xy_um)
    a, b = conn[:n, :n], conn[n:, n:]
    assert (a != b).nnz == 0 and a.sum() == 2 * (4 * 4 + 5 * 3)  # horizontal + vertical grid edges, both ways
    assert conn[:n, n:].nnz == 0
    by_pixels = spatial_graph(ad, radius=24.0, copy=True)  # 12 µm on slide a only
    assert (by_pixels[:n, :n] != a).nnz == 0 and by_pixels[n:, n:].nnz == 0
    del ad.uns["spatial"]["b"]["metadata"]["microns_per_pixel"]
    with pytest.raises(ValueError, match="slide 'b'.*pixel size"):
        spatial_graph(ad, radius_um=12.0, copy=True)


def test_a_graph_radius_in_pixels_and_in_micrometres_together_is_refused(tiny_config):
    from stgraph.config.load import ConfigError

    with pytest.raises(ConfigError, match="radius_um"):
        tiny_config("stgchb.yaml", "data.graph.radius=20", "data.graph.radius_um=10")
    assert tiny_config("stgchb.yaml", "data.graph.radius_um=10").data.graph.radius_um == 10
