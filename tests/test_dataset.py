"""Datasets: per-spot items and mini-batches, whole-slide graph items and PyG batches."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from stgraph.data import (
    RandomFlipRotate,
    SlideGraphDataset,
    SpotDataset,
    array_coordinates,
    imagenet_normalize,
    make_synthetic_collection,
)
from stgraph.graph import spatial_graph, to_edge_index


@pytest.fixture
def slides():
    return make_synthetic_collection(n_slides=2, n_rows=3, n_cols=4, n_genes=5, spacing=16)


def _arrays(slides, size=8):
    rng = np.random.default_rng(0)
    ids = [str(ad.obs["slide_id"].iloc[0]) for ad in slides]
    expr = {sid: rng.normal(size=(ad.n_obs, 5)).astype(np.float32) for sid, ad in zip(ids, slides)}
    patches = {sid: rng.integers(0, 256, (ad.n_obs, size, size, 3), dtype=np.uint8) for sid, ad in zip(ids, slides)}
    feats = {sid: rng.normal(size=(ad.n_obs, 7)).astype(np.float32) for sid, ad in zip(ids, slides)}
    return expr, patches, feats


def test_spot_items(slides):
    expr, patches, feats = _arrays(slides)
    ds = SpotDataset(slides, expr=expr, patches=patches, features=feats)
    assert len(ds) == 24 and ds.n_genes == 5 and ds.slide_ids == ["slide0", "slide1"]
    item = ds[13]  # slide1, row 1
    assert item["slide"] == 1 and item["index"] == 1
    torch.testing.assert_close(item["expr"], torch.from_numpy(expr["slide1"][1]))
    torch.testing.assert_close(item["patch"], imagenet_normalize(patches["slide1"][1]))
    torch.testing.assert_close(item["features"], torch.from_numpy(feats["slide1"][1]))
    ad = slides[1]
    assert item["array_coords"].tolist() == [ad.obs["array_row"].iloc[1], ad.obs["array_col"].iloc[1]]
    assert item["array_coords"].dtype == torch.long
    np.testing.assert_allclose(item["xy"].numpy(), ad.obsm["spatial"][1])
    assert ds[-1]["index"] == 11 and list(ds.slide_indices("slide1")) == list(range(12, 24))
    with pytest.raises(IndexError):
        ds[24]


def test_spot_minibatches_default_collate(slides):
    expr, patches, _ = _arrays(slides)
    ds = SpotDataset(slides, expr=expr, patches=patches, transform=RandomFlipRotate(seed=0))
    batch = next(iter(DataLoader(ds, batch_size=10, shuffle=False)))
    assert batch["expr"].shape == (10, 5) and batch["patch"].shape == (10, 3, 8, 8)
    assert batch["array_coords"].shape == (10, 2) and batch["slide"].tolist() == [0] * 10
    assert "features" not in batch
    # the augmentation permutes pixels within each patch (same multiset of values)
    plain = imagenet_normalize(patches["slide0"][0])
    assert torch.equal(batch["patch"][0].flatten().sort().values, plain.flatten().sort().values)


def test_spot_dataset_without_expression(slides):
    _, patches, _ = _arrays(slides)
    item = SpotDataset(slides, patches=patches)[0]
    assert "expr" not in item and item["patch"].shape == (3, 8, 8)


def test_spot_dataset_checks_arrays(slides):
    expr, patches, _ = _arrays(slides)
    with pytest.raises(KeyError, match="slide1"):
        SpotDataset(slides, expr={"slide0": expr["slide0"]})
    with pytest.raises(ValueError, match="expr\\['slide1'\\] has shape \\(3, 5\\)"):
        SpotDataset(slides, expr={"slide0": expr["slide0"], "slide1": expr["slide1"][:3]})
    with pytest.raises(ValueError, match="uint8"):
        SpotDataset(slides, patches={k: v.astype(np.float32) for k, v in patches.items()})


def test_array_coordinates_fallback_rank_bins(slides):
    ad = slides[0].copy()
    truth = array_coordinates(ad)
    del ad.obs["array_row"], ad.obs["array_col"]
    jitter = np.random.default_rng(0).uniform(-3, 3, size=ad.obsm["spatial"].shape)
    ad.obsm["spatial"] = ad.obsm["spatial"] * 3.0 + 1000 + jitter  # any scale/offset, a little jitter
    np.testing.assert_array_equal(array_coordinates(ad), truth)


def test_slide_graph_items_and_batches(slides):
    from torch_geometric.loader import DataLoader as GraphLoader

    expr, patches, feats = _arrays(slides)
    ds = SlideGraphDataset(slides, expr=expr, patches=patches, features=feats, radius_factor=1.1)
    assert len(ds) == 2
    g = ds[1]
    assert g.num_nodes == 12 and g.x.shape == (12, 5) and g.patch.shape == (12, 3, 8, 8)
    assert g.features.shape == (12, 7) and g.pos.shape == (12, 2) and g.array_coords.dtype == torch.long
    expected = to_edge_index(spatial_graph(slides[1], radius_factor=1.1, copy=True))
    assert torch.equal(g.edge_index, expected) and g.edge_index.shape[1] == 2 * (3 * 3 + 2 * 4)
    assert g.slide.tolist() == [1]
    assert "spatial_connectivities" not in slides[1].obsp

    batch = next(iter(GraphLoader(ds, batch_size=2)))
    assert batch.num_nodes == 24 and batch.x.shape == (24, 5) and batch.slide.tolist() == [0, 1]
    src, dst = batch.edge_index
    assert torch.equal(batch.batch[src], batch.batch[dst])  # no edge between slides
