"""Spot grids over tissue: Visium hex lattice, legacy ST and user pitches; the AnnData they become."""
import math

import numpy as np
import pytest
from scipy.spatial import cKDTree

from stgraph.data.wsi import grid_to_anndata, spot_grid, wsi_spot_grid
from stgraph.data.wsi_synthetic import pink_texture, write_pyramidal_tiff

MPP = 0.37  # µm per level-0 pixel (deliberately not a round number)


def _full_mask():
    return np.ones((200, 300), dtype=bool)  # at scale 0.02 → a 15 000 × 10 000 px slide = 5.55 × 3.7 mm


def test_visium_hex_pitch_and_array_coordinates():
    grid = spot_grid(_full_mask(), 0.02, MPP, kind="visium")
    pitch = 100.0 / MPP
    assert grid.pitch_px == pytest.approx(pitch)
    assert grid.spot_diameter_px == pytest.approx(55.0 / MPP)
    d, _ = cKDTree(grid.xy).query(grid.xy, k=7)
    np.testing.assert_allclose(d[:, 1], pitch, rtol=0, atol=1e-6 * pitch)  # nearest neighbour = 100 µm
    interior = (d[:, 1:] < pitch * 1.01).sum(axis=1) == 6
    assert interior.sum() > 0.8 * grid.n_spots  # hexagonal: six neighbours at one pitch
    np.testing.assert_array_equal(grid.array_row % 2, grid.array_col % 2)
    # Rows are pitch·√3/2 apart; odd rows are shifted by half a pitch.
    ys = np.unique(np.round(grid.xy[:, 1], 6))
    np.testing.assert_allclose(np.diff(ys), pitch * math.sqrt(3) / 2, atol=1e-6)
    x_even = grid.xy[grid.array_row == 0, 0].min()
    x_odd = grid.xy[grid.array_row == 1, 0].min()
    assert x_odd - x_even == pytest.approx(pitch / 2)
    # Positions follow the array coordinates: x = x0 + col · pitch/2, y = y0 + row · pitch·√3/2.
    np.testing.assert_allclose(grid.xy[:, 0] - grid.array_col * pitch / 2, grid.xy[0, 0], atol=1e-6)
    # Count: 5 550 µm × 3 700 µm covered by a 100 µm hex lattice starting 50 µm in; centres must lie
    # strictly inside (x < 5 550 µm: array_col < 110), rows at 50 + r · 86.6 µm < 3 700 µm (r ≤ 42).
    rows = math.floor((3700 - 50) / (100 * math.sqrt(3) / 2)) + 1
    assert rows == 43
    assert grid.n_spots == sum(len(range(r % 2, 110, 2)) for r in range(rows)) == 2365


def test_st_and_custom_square_grids():
    st = spot_grid(_full_mask(), 0.02, MPP, kind="st")
    d, _ = cKDTree(st.xy).query(st.xy, k=2)
    np.testing.assert_allclose(d[:, 1], 200.0 / MPP, atol=1e-6)
    assert st.lattice == "square" and st.spot_diameter_um == 100.0
    assert st.n_spots == 28 * 18  # x = 100, 300, …, 5 500 µm (< 5 550); y = 100, …, 3 500 µm (< 3 700)
    custom = spot_grid(_full_mask(), 0.02, MPP, kind=50.0)
    d, _ = cKDTree(custom.xy).query(custom.xy, k=2)
    np.testing.assert_allclose(d[:, 1], 50.0 / MPP, atol=1e-6)
    assert custom.spot_diameter_um == pytest.approx(27.5)
    assert spot_grid(_full_mask(), 0.02, MPP, kind=50.0, spot_diameter_um=10).spot_diameter_um == 10
    with pytest.raises(ValueError, match="grid kind"):
        spot_grid(_full_mask(), 0.02, MPP, kind="hd")


def test_only_spots_on_tissue_are_kept():
    yy, xx = np.mgrid[0:200, 0:300]
    disc = (xx - 150) ** 2 + (yy - 100) ** 2 <= 80**2
    scale = 0.02
    grid = spot_grid(disc, scale, MPP, kind="visium")
    mx, my = np.floor(grid.xy[:, 0] * scale).astype(int), np.floor(grid.xy[:, 1] * scale).astype(int)
    assert disc[my, mx].all()
    # Spot count ≈ disc area / area per hex spot (pitch² · √3/2).
    area_um2 = disc.sum() * (MPP / scale) ** 2
    assert grid.n_spots == pytest.approx(area_um2 / (100**2 * math.sqrt(3) / 2), rel=0.03)
    assert spot_grid(np.zeros((10, 10), bool), 0.1, MPP).n_spots == 0


def test_grid_anndata_follows_the_convention_and_plots(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc

    rng = np.random.default_rng(0)
    thumb = np.full((200, 300, 3), 250, np.uint8)
    thumb[40:160, 60:240] = pink_texture((120, 180), rng)
    mask = np.zeros((200, 300), bool)
    mask[40:160, 60:240] = True
    grid = spot_grid(mask, 0.02, MPP)
    adata = grid_to_anndata(grid, "slideA", thumbnail=thumb, source_image=tmp_path / "slideA.svs")
    assert adata.X.shape == (grid.n_spots, 0)
    assert adata.obsm["spatial"].dtype == np.float64 and adata.obsm["spatial"].shape == (grid.n_spots, 2)
    assert (adata.obs["in_tissue"] == 1).all()
    assert adata.obs["array_row"].dtype == np.int64 and adata.obs["array_col"].dtype == np.int64
    assert list(adata.obs["slide_id"].cat.categories) == ["slideA"]
    entry = adata.uns["spatial"]["slideA"]
    assert entry["images"]["hires"].shape == (200, 300, 3) and entry["images"]["hires"].dtype == np.uint8
    assert entry["scalefactors"]["tissue_hires_scalef"] == pytest.approx(0.02)
    assert entry["scalefactors"]["tissue_lowres_scalef"] == pytest.approx(0.02)
    assert entry["scalefactors"]["spot_diameter_fullres"] == pytest.approx(55 / MPP)
    assert entry["metadata"]["microns_per_pixel"] == MPP
    assert entry["metadata"]["source_image"].endswith("slideA.svs")
    assert entry["metadata"]["grid_kind"] == "visium" and entry["metadata"]["grid_pitch_um"] == 100.0
    big = grid_to_anndata(grid, "s", thumbnail=np.zeros((3000, 4500, 3), np.uint8))
    assert max(big.uns["spatial"]["s"]["images"]["hires"].shape[:2]) == 2000
    assert max(big.uns["spatial"]["s"]["images"]["lowres"].shape[:2]) == 600

    adata.obs["dummy"] = np.arange(adata.n_obs, dtype=float)
    axes = sc.pl.spatial(adata, img_key="hires", color="dummy", show=False)
    assert len(axes) == 1
    import matplotlib.pyplot as plt

    plt.close("all")


def test_wsi_spot_grid_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    h = w = 1024
    img = np.full((h, w, 3), 248, np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    disc = (xx - 512) ** 2 + (yy - 512) ** 2 <= 400**2
    img[disc] = pink_texture((h, w), rng)[disc]
    path = write_pyramidal_tiff(tmp_path / "wsi.tif", img, levels=3, mpp=2.0)  # 2 mm wide
    adata = wsi_spot_grid(path, kind="visium", thumbnail_max_side=256)
    expected = np.pi * (400 * 2.0) ** 2 / (100**2 * math.sqrt(3) / 2)
    assert adata.n_obs == pytest.approx(expected, rel=0.05)
    entry = adata.uns["spatial"]["wsi"]
    assert entry["images"]["hires"].shape == (256, 256, 3)
    assert entry["scalefactors"]["tissue_hires_scalef"] == pytest.approx(0.25)
    assert entry["metadata"]["source_image_path"] == str(path.resolve())
    # The existing patch loader opens the pyramid's level 0 from source_image_path.
    from stgraph.data.image import load_fullres_image

    image = load_fullres_image(adata)
    x, y = adata.obsm["spatial"][0].astype(int)
    np.testing.assert_array_equal(image.crop(x - 5, y - 5, x + 5, y + 5), img[y - 5 : y + 5, x - 5 : x + 5])
