"""The one slide container (PreparedSlide) and the shared array transforms (stgraph.data.transforms)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from stgraph.data import RandomFlipRotate, array_coordinates, imagenet_normalize, make_synthetic_collection
from stgraph.data.transforms import grid_coordinates, normalize_batch, patch_batch


@pytest.fixture
def slides():
    return make_synthetic_collection(n_slides=2, n_rows=3, n_cols=4, n_genes=5, spacing=16)


def test_array_coordinates_fallback_rank_bins(slides):
    ad = slides[0].copy()
    truth = array_coordinates(ad)
    del ad.obs["array_row"], ad.obs["array_col"]
    jitter = np.random.default_rng(0).uniform(-3, 3, size=ad.obsm["spatial"].shape)
    ad.obsm["spatial"] = ad.obsm["spatial"] * 3.0 + 1000 + jitter  # any scale/offset, a little jitter
    np.testing.assert_array_equal(array_coordinates(ad), truth)


def test_grid_coordinates_are_xy_from_zero(slides):
    ad = slides[0]
    grid = grid_coordinates(ad)
    rc = array_coordinates(ad)
    np.testing.assert_array_equal(grid, rc[:, ::-1] - rc[:, ::-1].min(0))


def test_one_imagenet_normalisation():
    patches = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    a = imagenet_normalize(patches)
    b = normalize_batch(patch_batch(patches))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(imagenet_normalize(patches[0]), a[0])
    with pytest.raises(TypeError):
        imagenet_normalize(patches.astype(np.float32))


def test_flip_rotate_reproducible():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    torch.testing.assert_close(RandomFlipRotate(seed=1)(x), RandomFlipRotate(seed=1)(x))


def test_prepared_slide_is_the_one_container(slides, tiny_config):
    from stgraph.training import PreparedSlide, fit_preprocessor, prepare_slide

    cfg = tiny_config("stgchb.yaml", "data.genes=shared", "data.harmony=false")
    prep, expr = fit_preprocessor(cfg, list(slides))
    s = prepare_slide(slides[0], cfg, prep)
    assert isinstance(s, PreparedSlide)
    assert s.n_spots == slides[0].n_obs and s.expr.shape == (s.n_spots, 5)
    assert s.patches.shape == (s.n_spots, 32, 32, 3) and s.edge_index is not None
    np.testing.assert_array_equal(s.coords, grid_coordinates(slides[0]))
