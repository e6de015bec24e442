"""Whole-slide image reading: pyramid levels, regions, pixel size from each metadata flavour."""
import numpy as np
import pytest

from stgraph.data.errors import SlideFormatError
from stgraph.data.wsi import (
    WSIImage,
    iter_patches_at_mpp,
    mpp_from_aperio_description,
    mpp_from_ome_xml,
    mpp_from_tiff_resolution,
    open_wsi,
    read_region_at_mpp,
)
from stgraph.data.wsi_synthetic import block_mean, write_pyramidal_tiff, write_synthetic_wsi


def _image(h=256, w=384, seed=0):
    rng = np.random.default_rng(seed)
    # Smooth content (so bilinear resampling and block means agree closely) plus a little noise.
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([128 + 100 * np.sin(xx / 23.0), 128 + 100 * np.cos(yy / 17.0), (xx + yy) % 256], axis=-1)
    return np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture()
def pyramid(tmp_path):
    img = _image()
    return write_pyramidal_tiff(tmp_path / "slide.tif", img, levels=3, mpp=0.5), img


def test_levels_dimensions_and_downsamples(pyramid):
    path, img = pyramid
    with open_wsi(path) as wsi:
        assert wsi.backend == "tifffile"
        assert wsi.level_count == 3
        assert wsi.level_dimensions == [(384, 256), (192, 128), (96, 64)]
        assert wsi.level_downsamples == pytest.approx([1.0, 2.0, 4.0])
        assert wsi.shape == (256, 384, 3)
        assert wsi.best_level_for_downsample(1.9) == 0
        assert wsi.best_level_for_downsample(2.0) == 1
        assert wsi.best_level_for_downsample(3.9999999) == 2
        assert wsi.best_level_for_downsample(100) == 2
        assert wsi.best_level_for_downsample(0.3) == 0


def test_crop_and_read_region_match_levels(pyramid):
    path, img = pyramid
    with open_wsi(path) as wsi:
        np.testing.assert_array_equal(wsi.crop(10, 20, 74, 52), img[20:52, 10:74])
        # Outside the slide: padded.
        out = wsi.crop(-5, -3, 5, 7, pad_value=7)
        assert (out[:3] == 7).all() and (out[:, :5] == 7).all()
        np.testing.assert_array_equal(out[3:, 5:], img[0:7, 0:5])
        # read_region: level-0 corner, size in level pixels; equals the block mean of level 0.
        region = wsi.read_region(64, 32, 40, 30, level=2)
        np.testing.assert_array_equal(region, block_mean(img, 4)[8:38, 16:56])
        lvl1 = wsi.read_region(100, 50, 30, 20, level=1)
        np.testing.assert_array_equal(lvl1, block_mean(img, 2)[25:45, 50:80])


def test_read_region_at_mpp_uses_the_right_level(pyramid):
    path, img = pyramid
    with open_wsi(path) as wsi:
        # 1.0 µm/px = downsample 2 → level 1 exactly, no interpolation needed.
        out = read_region_at_mpp(wsi, 64, 32, 128, 96, target_mpp=1.0)
        assert out.shape == (48, 64, 3)
        np.testing.assert_array_equal(out, block_mean(img, 2)[16:64, 32:96])
        # 1.5 µm/px: read level 1 (ds 2 ≤ 3) and shrink by 1.5; close to the 3×3 block mean of level 0.
        out = read_region_at_mpp(wsi, 60, 30, 180, 120, target_mpp=1.5)
        assert out.shape == (40, 60, 3)
        ref = block_mean(img[30:150, 60:240], 3).astype(float)
        assert np.abs(out.astype(float) - ref)[2:-2, 2:-2].mean() < 6.0
        # Finer than level 0: level 0 upsampled ×2.
        up = read_region_at_mpp(wsi, 100, 100, 20, 10, target_mpp=0.25)
        assert up.shape == (20, 40, 3)
        np.testing.assert_allclose(up[1:-1:2, 1:-1:2].astype(int), img[100:110, 100:120][:-1, :-1], atol=40)
        assert np.abs(up[::2, ::2].astype(int) - img[100:110, 100:120]).mean() < 6
        # Exact output size wins.
        assert read_region_at_mpp(wsi, 0, 0, 100, 100, 0.5, out_size=(33, 21)).shape == (21, 33, 3)


@pytest.mark.parametrize("target_mpp", [1.0, 1.5])
def test_iter_patches_matches_single_reads(pyramid, target_mpp):
    path, img = pyramid
    rng = np.random.default_rng(1)
    xy = rng.uniform(20, 360, size=(23, 2)) * [1, 0.66]
    side = int(round(30.0 / target_mpp))
    with open_wsi(path) as wsi:
        seen = np.zeros(len(xy), int)
        for idx, patches in iter_patches_at_mpp(wsi, xy, patch_um=30.0, target_mpp=target_mpp, batch_size=5,
                                                max_read_pixels=2000):
            assert patches.shape == (len(idx), side, side, 3)
            for i, p in zip(idx, patches):
                seen[i] += 1
                ref = read_region_at_mpp(wsi, xy[i, 0] - 30, xy[i, 1] - 30, 60, 60, target_mpp)
                np.testing.assert_allclose(p.astype(int), ref.astype(int), atol=1)
        assert (seen == 1).all()


def test_thumbnail(pyramid):
    path, img = pyramid
    with open_wsi(path) as wsi:
        thumb = wsi.thumbnail(96)
        assert thumb.shape == (64, 96, 3)
        np.testing.assert_array_equal(thumb, block_mean(img, 4))  # read straight from level 2
        # Reading in strips (bounded memory) gives the same pixels as one read.
        np.testing.assert_allclose(wsi.read_level_resized(0, 100, 67, max_strip_pixels=384 * 20).astype(int),
                                   wsi.read_level_resized(0, 100, 67).astype(int), atol=1)
        thumb = wsi.thumbnail(128)  # from level 1 (192 px) shrunk by 1.5
        assert thumb.shape == (85, 128, 3)
        assert np.abs(thumb.astype(float) - block_mean(img[:255], 3)[:85]).mean() < 6.0


@pytest.mark.parametrize("flavour, unit, mpp", [
    ("resolution", "CENTIMETER", 0.2527),
    ("resolution", "INCH", 0.5),
    ("svs", None, 0.2520),
    ("ome", None, 0.3441),
])
def test_mpp_from_each_flavour(tmp_path, flavour, unit, mpp):
    suffix = ".svs" if flavour == "svs" else ".tif"
    path = write_pyramidal_tiff(tmp_path / f"s{suffix}", _image(128, 128), levels=2, mpp=mpp, flavour=flavour,
                                resolution_unit=unit or "CENTIMETER")
    with WSIImage(path, backend="tifffile") as wsi:
        assert wsi.mpp == pytest.approx(mpp, rel=1e-6)
        assert wsi.level_count == 2
    with WSIImage(path, mpp=0.9, backend="tifffile") as wsi:  # the user's value wins
        assert wsi.mpp == 0.9 and wsi.mpp_source == "user"


def test_missing_mpp_is_a_clear_error(tmp_path):
    path = write_pyramidal_tiff(tmp_path / "nompp.tif", _image(64, 64), levels=1, flavour="none")
    with pytest.raises(SlideFormatError, match=r"nompp\.tif.*--mpp"):
        WSIImage(path)
    with WSIImage(path, require_mpp=False) as wsi:
        assert wsi.mpp is None
        with pytest.raises(SlideFormatError, match="mpp"):
            read_region_at_mpp(wsi, 0, 0, 10, 10, 1.0)
    # 72 dpi from an image editor is not a microscope calibration.
    import tifffile
    tifffile.imwrite(tmp_path / "dpi.tif", _image(32, 32), resolution=(72, 72), resolutionunit="INCH")
    with pytest.raises(SlideFormatError, match="--mpp"):
        WSIImage(tmp_path / "dpi.tif")


def test_metadata_parsers():
    assert mpp_from_aperio_description("Aperio Image Library v11\r\n1x1 |AppMag = 40|MPP = 0.2520|X") == 0.252
    assert mpp_from_aperio_description("something else |MPP = 0.25") is None
    ome = ('<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image><Pixels PhysicalSizeX="250" '
           'PhysicalSizeXUnit="nm" SizeX="1"/></Image></OME>')
    assert mpp_from_ome_xml(ome) == pytest.approx(0.25)
    assert mpp_from_ome_xml(ome.replace(' PhysicalSizeXUnit="nm"', "").replace("250", "0.5")) == 0.5
    assert mpp_from_tiff_resolution((40000, 1), 3) == pytest.approx(0.25)
    assert mpp_from_tiff_resolution(50800.0, 2) == pytest.approx(0.5)
    assert mpp_from_tiff_resolution((72, 1), 2) is None  # 352.8 µm/px: implausible
    assert mpp_from_tiff_resolution((40000, 1), 1) is None  # no unit


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.svs"):
        WSIImage(tmp_path / "nothere.svs")
    bad = tmp_path / "junk.tif"
    bad.write_bytes(b"not a tiff at all")
    with pytest.raises(SlideFormatError, match="junk.tif"):
        WSIImage(bad, mpp=0.5)
    mrxs = tmp_path / "slide.mrxs"
    mrxs.write_bytes(b"x")
    with pytest.raises(SlideFormatError, match="openslide"):
        WSIImage(mrxs, mpp=0.5, backend="tifffile")


def test_streamed_synthetic_wsi(tmp_path):
    path = write_synthetic_wsi(tmp_path / "big.tif", size=2048, mpp=0.5, tile=256, blobs=[(0.5, 0.5, 0.3)])
    with open_wsi(path) as wsi:
        assert wsi.mpp == pytest.approx(0.5)
        assert wsi.level_dimensions[:2] == [(2048, 2048), (1024, 1024)]
        assert wsi.level_count == 2
        centre = wsi.read_region(1000, 1000, 48, 48)
        corner = wsi.read_region(0, 0, 48, 48, level=1)
        assert (corner == 255).all() and centre.mean() < 230


def test_openslide_backend_when_installed(tmp_path):
    pytest.importorskip("openslide")
    img = _image()
    path = write_pyramidal_tiff(tmp_path / "os.svs", img, levels=3, mpp=0.252, flavour="svs")
    with WSIImage(path) as wsi:
        assert wsi.backend == "openslide"
        assert wsi.mpp == pytest.approx(0.252)
        assert wsi.level_dimensions == [(384, 256), (192, 128), (96, 64)]
        np.testing.assert_array_equal(wsi.crop(10, 20, 74, 52), img[20:52, 10:74])
        np.testing.assert_array_equal(wsi.read_region(64, 32, 40, 30, level=2), block_mean(img, 4)[8:38, 16:56])
        assert (wsi.crop(-4, -4, 0, 0) == 255).all()  # transparent outside → white
