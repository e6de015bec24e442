"""An Aperio-style .svs read through openslide (the optional ``stgraph[openslide]`` extra)."""
import numpy as np
import pytest

from stgraph.data.wsi import WSIImage, openslide_available

needs_openslide = pytest.mark.skipif(not openslide_available(),
                                     reason="openslide not importable (pip install 'stgraph[openslide]')")


def _write_svs(path, width=512, height=384):
    """A tiled, pyramidal TIFF with an Aperio ImageDescription (what openslide's aperio driver detects):
    level 0 a left/right split (red | blue), level 1 its 2× downsample; uncompressed tiles."""
    import tifffile

    img = np.zeros((height, width, 3), np.uint8)
    img[:, : width // 2] = (200, 30, 40)
    img[:, width // 2:] = (30, 40, 200)
    desc = f"Aperio Image Library v12.0.0\r\n{width}x{height} [0,0 {width}x{height}] (256x256) |AppMag = 40|MPP = 0.25"
    with tifffile.TiffWriter(path) as tif:
        tif.write(img, tile=(256, 256), photometric="rgb", description=desc, metadata=None)
        tif.write(img[::2, ::2].copy(), tile=(256, 256), photometric="rgb",
                  description=f"Aperio Image Library v12.0.0\r\n{width}x{height} -> {width // 2}x{height // 2}",
                  metadata=None)
    return path


@needs_openslide
def test_svs_reads_through_openslide(tmp_path):
    slide = WSIImage(_write_svs(tmp_path / "s.svs"))
    try:
        assert slide.backend == "openslide"  # auto picks openslide for .svs when it is importable
        assert slide.mpp == pytest.approx(0.25) and slide.level_dimensions[0] == (512, 384)
        assert slide.level_count == 2 and slide.level_downsamples[1] == pytest.approx(2.0)
        left = slide.read_region(10, 10, 32, 32)
        right = slide.read_region(400, 300, 32, 32)
        assert left.shape == (32, 32, 3) and left.dtype == np.uint8
        np.testing.assert_array_equal(np.median(left.reshape(-1, 3), 0), (200, 30, 40))
        np.testing.assert_array_equal(np.median(right.reshape(-1, 3), 0), (30, 40, 200))
        low = slide.read_region(0, 0, 64, 64, level=1)  # level-0 corner, level-1 pixels
        np.testing.assert_array_equal(np.median(low.reshape(-1, 3), 0), (200, 30, 40))
    finally:
        slide.close()


def test_without_openslide_the_error_names_the_extra(tmp_path, monkeypatch):
    """A .mrxs (not a TIFF) without openslide: one line naming the file and the extra to install."""
    import stgraph.data.wsi.image as image
    from stgraph.errors import StgraphError

    monkeypatch.setattr(image, "openslide_available", lambda: False)
    (tmp_path / "s.mrxs").write_bytes(b"not read")
    with pytest.raises(StgraphError, match=r"s\.mrxs.*stgraph\[openslide\]"):
        WSIImage(tmp_path / "s.mrxs")
    with pytest.raises(StgraphError, match=r"stgraph\[openslide\]"):
        WSIImage(_write_svs(tmp_path / "s.svs") if openslide_available() else tmp_path / "s.mrxs",
                 backend="openslide")
