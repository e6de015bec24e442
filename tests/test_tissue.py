"""Tissue detection on thumbnails: Otsu on HSV saturation, cleaned."""
import warnings

import numpy as np
import pytest

from stgraph.data.errors import SlideFormatError
from stgraph.data.wsi import NoTissueError, saturation, tissue_mask
from stgraph.data.wsi_synthetic import pink_texture


def _slide(h=400, w=500, seed=0):
    rng = np.random.default_rng(seed)
    # Glass: near-white with noise; a bit of grey shading so the background is not perfectly flat.
    img = np.clip(245 + rng.normal(0, 3, (h, w, 1)), 0, 255).repeat(3, axis=2).astype(np.uint8)
    return img, pink_texture((h, w), rng), np.mgrid[0:h, 0:w]


def test_saturation_values():
    rgb = np.array([[[255, 255, 255], [255, 0, 0], [0, 0, 0], [200, 100, 100]]], dtype=np.uint8)
    np.testing.assert_array_equal(saturation(rgb), [[0, 255, 0, 128]])


def test_disc_area_recovered_and_fragments_removed():
    img, tex, (yy, xx) = _slide()
    disc = (xx - 220) ** 2 + (yy - 200) ** 2 <= 120**2
    dust = (xx - 450) ** 2 + (yy - 50) ** 2 <= 3**2  # ~29 px = 1 800 µm² at 8 µm/px: debris
    img[disc | dust] = tex[disc | dust]
    mask = tissue_mask(img, mpp=8.0)
    assert mask.dtype == bool and mask.shape == (400, 500)
    assert abs(mask.sum() / (np.pi * 120**2) - 1) < 0.03
    assert not mask[40:60, 440:460].any()
    assert (mask & disc).sum() / disc.sum() > 0.98
    # Without mpp, the pixel threshold applies: 64 px keeps the disc, drops the 29 px dust.
    mask_px = tissue_mask(img)
    assert not mask_px[40:60, 440:460].any() and abs(mask_px.sum() / disc.sum() - 1) < 0.03
    # A lower µm² floor keeps the dust.
    assert tissue_mask(img, mpp=8.0, min_area_um2=500, median_size=1)[40:60, 440:460].any()


def test_holes_are_filled():
    img, tex, (yy, xx) = _slide()
    r2 = (xx - 250) ** 2 + (yy - 200) ** 2
    ring = (r2 <= 150**2) & (r2 > 50**2)
    img[ring] = tex[ring]
    mask = tissue_mask(img, mpp=8.0)
    assert mask[200, 250]
    assert abs(mask.sum() / (np.pi * 150**2) - 1) < 0.03
    assert not tissue_mask(img, mpp=8.0, fill_holes=False)[200, 250]


def test_blank_image_is_a_clear_error():
    img, _, _ = _slide()
    with pytest.raises(NoTissueError, match=r"no tissue found in slide_x\.svs"):
        tissue_mask(img, source="slide_x.svs")
    assert issubclass(NoTissueError, SlideFormatError)
    with pytest.raises(NoTissueError):
        tissue_mask(np.full((50, 50, 3), 255, np.uint8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mask = tissue_mask(np.zeros((50, 50, 3), np.uint8), on_empty="warn")
    assert not mask.any() and any("no tissue" in str(w.message) for w in caught)
