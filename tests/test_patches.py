"""Patches: centring, padding, physical size, image back-ends, cache reuse, normalisation, augmentation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stgraph.data import SlideFormatError, make_synthetic_slide
from stgraph.data import patches as P
from stgraph.data.image import load_fullres_image
from stgraph.data.patches import extract_patches
from stgraph.data.transforms import IMAGENET_MEAN, IMAGENET_STD, imagenet_normalize, random_flip_rotate

from tests.conftest import SHARED  # noqa: E402
HER2ST = SHARED / "data" / "her2st"


@pytest.fixture
def slide():
    return make_synthetic_slide(n_rows=4, n_cols=5, n_genes=6, spacing=20, slide_id="syn")


def _image(ad):
    return ad.uns["spatial"]["syn"]["images"]["fullres"]


def _on_disk(ad, path: Path):
    """The same slide, its image moved from memory to ``path`` (metadata source_image_path)."""
    out = ad.copy()
    lib = out.uns["spatial"]["syn"]
    image = lib["images"].pop("fullres")
    lib["metadata"]["source_image_path"] = str(path)
    return out, image


def test_patch_is_centred_on_marked_pixel(slide):
    image = _image(slide)
    x, y = slide.obsm["spatial"][7].astype(int)
    image[y, x] = (1, 2, 3)
    patches = extract_patches(slide, size=9)
    assert patches.shape == (slide.n_obs, 9, 9, 3) and patches.dtype == np.uint8
    np.testing.assert_array_equal(patches[7, 4, 4], [1, 2, 3])
    np.testing.assert_array_equal(patches[7], image[y - 4 : y + 5, x - 4 : x + 5])
    # even sizes: the centre pixel lands at (s//2, s//2)
    np.testing.assert_array_equal(extract_patches(slide, size=10)[7, 5, 5], [1, 2, 3])


def test_fractional_coordinates_round_half_up(slide):
    slide.obsm["spatial"][0] = [40.5, 41.49]  # → centre pixel (41, 41)
    image = _image(slide)
    np.testing.assert_array_equal(extract_patches(slide, size=5)[0], image[39:44, 39:44])


def test_padding_outside_image(slide):
    slide.obsm["spatial"][0] = [0.0, 0.0]
    patch = extract_patches(slide, size=8, pad_value=255)[0]
    assert (patch[:4] == 255).all() and (patch[:, :4] == 255).all()
    np.testing.assert_array_equal(patch[4:, 4:], _image(slide)[:4, :4])
    assert (extract_patches(slide, size=8, pad_value=0)[0][:4] == 0).all()


def test_patch_um_crops_physical_size_then_resizes(slide):
    from PIL import Image

    x, y = slide.obsm["spatial"][3].astype(int)
    patches = extract_patches(slide, size=8, patch_um=8.0, microns_per_pixel=0.5)  # 16 px crop → 8 px
    crop = _image(slide)[y - 8 : y + 8, x - 8 : x + 8]
    expected = np.asarray(Image.fromarray(crop).resize((8, 8), Image.Resampling.BILINEAR, reducing_gap=2.0))
    np.testing.assert_array_equal(patches[3], expected)
    with pytest.raises(ValueError, match="microns_per_pixel"):
        extract_patches(slide, size=8, patch_um=8.0)
    slide.uns["spatial"]["syn"]["metadata"]["microns_per_pixel"] = 0.5
    np.testing.assert_array_equal(extract_patches(slide, size=8, patch_um=8.0), patches)


def test_png_and_tiff_sources_match_memory(slide, tmp_path):
    import tifffile
    from PIL import Image

    expected = extract_patches(slide, size=12)
    png, image = _on_disk(slide, tmp_path / "he.png")
    Image.fromarray(image).save(tmp_path / "he.png")
    np.testing.assert_array_equal(extract_patches(png, size=12), expected)
    assert load_fullres_image(png).shape == image.shape

    for name, kwargs in [("plain.tif", {}), ("deflate.tif", {"compression": "zlib", "tile": (16, 16)})]:
        tif, _ = _on_disk(slide, tmp_path / name)
        tifffile.imwrite(tmp_path / name, image, **kwargs)
        np.testing.assert_array_equal(extract_patches(tif, size=12), expected, err_msg=name)


def test_undecodable_or_missing_source_image(slide, tmp_path):
    junk, _ = _on_disk(slide, tmp_path / "junk.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(SlideFormatError, match="junk.jpg"):
        extract_patches(junk, size=8)
    gone, _ = _on_disk(slide, tmp_path / "gone.png")
    with pytest.raises(FileNotFoundError, match="gone.png"):
        extract_patches(gone, size=8)
    del gone.uns["spatial"]["syn"]["metadata"]["source_image_path"]
    with pytest.raises(SlideFormatError, match="no full-resolution image"):
        extract_patches(gone, size=8)


def test_cache_is_reused_and_keyed_by_coordinates(slide, tmp_path, monkeypatch):
    first = extract_patches(slide, size=8, cache_dir=tmp_path)
    cache_file = P.patch_cache_path(tmp_path, "syn", 8, xy=slide.obsm["spatial"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [cache_file.with_suffix(".json").name, cache_file.name]
    assert cache_file.name.startswith("syn_8_") and len(cache_file.stem) == len("syn_8_") + 16
    np.testing.assert_array_equal(np.load(cache_file), first)

    def no_image(adata):
        raise AssertionError("the image was read although the cache matches")

    monkeypatch.setattr(P, "load_fullres_image", no_image)
    np.testing.assert_array_equal(extract_patches(slide, size=8, cache_dir=tmp_path), first)

    moved = slide.copy()
    moved.obsm["spatial"] = moved.obsm["spatial"] + 1.0  # other coordinates → other key → recomputed
    with pytest.raises(AssertionError, match="cache matches"):
        extract_patches(moved, size=8, cache_dir=tmp_path)
    monkeypatch.undo()
    again = extract_patches(moved, size=8, cache_dir=tmp_path)
    assert not np.array_equal(again, first)
    assert len(list(tmp_path.glob("syn_8_*.npy"))) == 2 and cache_file.is_file()  # one entry per coordinates
    assert not list(tmp_path.glob("syn_8_16um_*.npy"))
    extract_patches(slide, size=8, patch_um=16, microns_per_pixel=1.0, cache_dir=tmp_path)
    um_file = P.patch_cache_path(tmp_path, "syn", 8, patch_um=16, xy=slide.obsm["spatial"])
    assert um_file.name.startswith("syn_8_16um_") and um_file.is_file()


def test_imagenet_normalize_values():
    patch = np.zeros((2, 3, 4, 3), dtype=np.uint8)
    patch[1, 2, 3] = (255, 0, 128)
    out = imagenet_normalize(patch)
    assert out.shape == (2, 3, 3, 4) and out.dtype == torch.float32
    expected = [(1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], (0 - IMAGENET_MEAN[1]) / IMAGENET_STD[1],
                (128 / 255 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]]
    np.testing.assert_allclose(out[1, :, 2, 3].numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(out[0, 0, 0, 0].item(), -0.485 / 0.229, rtol=1e-6)
    assert imagenet_normalize(patch[0]).shape == (3, 3, 4)
    with pytest.raises(TypeError, match="uint8"):
        imagenet_normalize(patch.astype(np.float32))


def test_random_flip_rotate_is_dihedral():
    x = torch.arange(9.0).reshape(1, 3, 3)
    group = {tuple(torch.rot90(t, k, (-2, -1)).flatten().tolist()) for t in (x, x.flip(-1)) for k in range(4)}
    assert len(group) == 8
    gen = torch.Generator().manual_seed(0)
    seen = {tuple(random_flip_rotate(x, gen).flatten().tolist()) for _ in range(200)}
    assert seen == group
    batch = torch.stack([x, x + 100])
    out = random_flip_rotate(batch, torch.Generator().manual_seed(1))
    assert out.shape == batch.shape and sorted(out[1].flatten().tolist()) == sorted((x + 100).flatten().tolist())
    a = random_flip_rotate(batch, torch.Generator().manual_seed(5))
    b = random_flip_rotate(batch, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


@pytest.mark.slow
def test_her2st_patches_real_image():
    """One real decode: B4's patches are 224 px tissue crops (not background) centred on the spots."""
    if not HER2ST.exists():
        pytest.skip(f"shared data not found at {HER2ST}")
    from stgraph.data.readers import read_her2st

    ad = read_her2st(HER2ST, "B4", hires_max_side=None)
    ad = ad[:40].copy()
    patches = extract_patches(ad, size=224)
    assert patches.shape == (40, 224, 224, 3)
    # the selected spots lie on tissue: H&E-stained, darker than the white glass background
    assert patches.reshape(40, -1).mean(1).max() < 230
    centre = patches[:, 112 - 50 : 112 + 50, 112 - 50 : 112 + 50].reshape(40, -1).mean(1)
    assert (centre < 235).all()


def test_zero_spot_slide_is_an_error(slide):
    with pytest.raises(SlideFormatError, match="'syn' has no spots"):
        extract_patches(slide[:0].copy(), size=8)


def _hires_only(ad, factor: int):
    """``ad`` with its in-memory full image replaced by a ``factor``× smaller ``hires`` copy (Visium-like)."""
    out = ad.copy()
    lib = out.uns["spatial"]["syn"]
    full = lib["images"].pop("fullres")
    h, w = full.shape[0] // factor, full.shape[1] // factor
    small = full[: h * factor, : w * factor].reshape(h, factor, w, factor, 3).mean((1, 3)).astype(np.uint8)
    lib["images"]["hires"] = small
    lib["scalefactors"] = {"tissue_hires_scalef": 1.0 / factor, "spot_diameter_fullres": 10.0}
    return out, small


def test_hires_fallback_crops_in_fullres_units(slide):
    """Without a full-resolution image the hires image is upsampled: same patch geometry, centred spots."""
    hires, small = _hires_only(slide, factor=4)
    # a marked 2 × 2 hires block; a spot centred on it in full-resolution pixels sees it at its patch centre
    small[10:12, 10:12] = (0, 0, 255)
    hires.obsm["spatial"][0] = [11 * 4, 11 * 4]  # hires pixel corner (11, 11) ↔ full-res 44
    with pytest.warns(UserWarning, match="upsampled from images\['hires'\]"):
        image = load_fullres_image(hires)
    assert image.shape == (small.shape[0] * 4, small.shape[1] * 4, 3)
    with pytest.warns(UserWarning):
        patches = extract_patches(hires, size=16)
    assert patches.shape == (slide.n_obs, 16, 16, 3)
    np.testing.assert_array_equal(patches[0, 6:10, 6:10], np.broadcast_to([0, 0, 255], (4, 4, 3)))
    assert (patches[0, 0, 0] != [0, 0, 255]).any()  # the block does not fill the patch
    # elsewhere the upsampled patch matches the true full-resolution crop up to the lost detail
    with pytest.warns(UserWarning):
        approx = extract_patches(hires, size=16)[1:].astype(float)
    exact = extract_patches(slide, size=16)[1:].astype(float)
    box = exact.reshape(len(exact), 4, 4, 4, 4, 3).mean((2, 4))  # compare 4 × 4 block means
    approx_box = approx.reshape(len(approx), 4, 4, 4, 4, 3).mean((2, 4))
    assert np.abs(approx_box - box).mean() < 12


def test_hires_fallback_on_visium_fixture():
    folder = SHARED / "data" / "visium_tiny" / "1.0.0"
    if not folder.exists():
        pytest.skip(f"shared data not found at {folder}")
    from stgraph.data.readers import read_visium

    ad = read_visium(folder)
    lib = ad.uns["spatial"]["1.0.0"]
    # this fixture's hires PNG is blank (all black), so its patches are black
    with pytest.warns(UserWarning, match="images\\['hires'\\]"):
        assert (extract_patches(ad, size=8) == 0).all()
    # its lowres PNG has content: without hires, lowres and tissue_lowres_scalef are used
    del lib["images"]["hires"]
    scale, lowres = lib["scalefactors"]["tissue_lowres_scalef"], lib["images"]["lowres"]
    with pytest.warns(UserWarning, match="images\\['lowres'\\]"):
        patches = extract_patches(ad, size=64)
    assert patches.shape == (100, 64, 64, 3) and patches.std() > 10
    # the patch centre shows the lowres pixels under the spot (lowres pixel = full-res pixel × scale)
    centre = patches[:, 28:36, 28:36].reshape(100, -1, 3).mean(1)
    hx, hy = np.floor(ad.obsm["spatial"] * scale).astype(int).T
    under = np.stack([lowres[y, x] for x, y in zip(hx, hy)]).astype(float)
    assert np.abs(centre - under).mean() < 8
    shifted = np.stack([lowres[y + 3, x + 3] for x, y in zip(hx, hy)]).astype(float)
    assert np.abs(centre - shifted).mean() > 2 * np.abs(centre - under).mean()
