"""Readers and SlideCollection: real HER2+ / Visium fixtures and every bad-input error."""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from stgraph.data import SlideCollection, SlideFormatError, make_synthetic_slide
from stgraph.data.readers import (
    HER2ST_IMAGED_SECTIONS,
    read_h5ad,
    read_her2st,
    read_slide,
    read_spot_csv,
    read_st_legacy,
    read_visium,
)

from tests.conftest import SHARED  # noqa: E402
HER2ST = SHARED / "data" / "her2st"
VISIUM = SHARED / "data" / "visium_tiny"

# Selected spots that also have counts (the selection files list a few more selected spots than the counts).
HER2ST_SPOTS = {"B4": 283, "C2": 187, "C3": 180, "C4": 184, "C5": 181, "C6": 178}


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found at {path}")
    return path


@pytest.fixture(scope="module")
def her2st_slides():
    root = _require(HER2ST)
    return {s: read_her2st(root, s, hires_max_side=None) for s in HER2ST_IMAGED_SECTIONS}


# ------------------------------------------------------------------------------------------------ HER2+
@pytest.mark.slow
def test_her2st_all_six_sections_spot_counts(her2st_slides):
    assert {s: ad.n_obs for s, ad in her2st_slides.items()} == HER2ST_SPOTS
    shared = set.intersection(*(set(ad.var_names) for ad in her2st_slides.values()))
    assert len(shared) == 13891
    assert her2st_slides["B4"].n_vars == 15289


@pytest.mark.slow
def test_her2st_convention_matches_files(her2st_slides):
    ad = her2st_slides["B4"]
    assert sp.isspmatrix_csr(ad.X) and ad.X.dtype == np.float32
    assert str(ad.obs["slide_id"].dtype) == "category" and set(ad.obs["slide_id"]) == {"B4"}
    counts = pd.read_csv(HER2ST / "ST-cnts" / "B4.tsv.gz", sep="\t", index_col=0)
    np.testing.assert_array_equal(ad.X.toarray(), counts.loc[ad.obs_names, ad.var_names].to_numpy(np.float32))
    sel = pd.read_csv(HER2ST / "ST-spotfiles" / "B4_selection.tsv", sep="\t")
    row = sel[(sel.x == 10) & (sel.y == 14)].iloc[0]
    i = ad.obs_names.get_loc("10x14")
    np.testing.assert_allclose(ad.obsm["spatial"][i], [row.pixel_x, row.pixel_y])
    assert (ad.obs.loc["10x14", ["array_row", "array_col"]] == [14, 10]).all()
    meta = ad.uns["spatial"]["B4"]["metadata"]
    assert Path(meta["source_image_path"]).name == "BT10737_D2_HE.jpg"
    assert meta["fullres_shape"] == [9923, 9272]
    # Pixel size from the array: ≈ 290 px between neighbours 200 µm apart → ≈ 0.69 µm/px, 100 µm spots ≈ 145 px.
    assert 0.65 < meta["microns_per_pixel"] < 0.73
    assert ad.uns["spatial"]["B4"]["scalefactors"]["spot_diameter_fullres"] == pytest.approx(
        100.0 / meta["microns_per_pixel"])


@pytest.mark.slow
def test_her2st_hires_thumbnail():
    root = _require(HER2ST)
    ad = read_her2st(root, "C2", hires_max_side=500)
    lib = ad.uns["spatial"]["C2"]
    h, w = lib["metadata"]["fullres_shape"]
    thumb = lib["images"]["hires"]
    assert max(thumb.shape[:2]) == 500 and thumb.dtype == np.uint8 and thumb.shape[2] == 3
    assert lib["scalefactors"]["tissue_hires_scalef"] == pytest.approx(thumb.shape[1] / w)
    assert thumb.shape[0] == pytest.approx(h * lib["scalefactors"]["tissue_hires_scalef"], abs=1)


@pytest.mark.slow
def test_collection_from_her2st_and_concat(her2st_slides):
    col = SlideCollection(her2st_slides.values())
    assert col.ids == list(HER2ST_IMAGED_SECTIONS) and len(col) == 6 and "C6" in col
    train = col.without("C6")
    assert train.ids == ["B4", "C2", "C3", "C4", "C5"]
    assert col.subset(["C3", "B4"]).ids == ["C3", "B4"]
    both = col.subset(["B4", "C2"]).concat()
    assert both.n_obs == 283 + 187
    assert list(both.obs["slide_id"].cat.categories) == ["B4", "C2"]
    assert both.obs_names.is_unique and set(both.uns["spatial"]) == {"B4", "C2"}
    assert set(both.var_names) == set(col["B4"].var_names) & set(col["C2"].var_names)
    with pytest.raises(ValueError, match="duplicate slide id 'B4'"):
        SlideCollection([col["B4"], col["B4"]])
    with pytest.raises(KeyError, match="no slide 'Z9'"):
        col["Z9"]


@pytest.mark.slow
def test_her2st_root_through_read_slide_and_collection():
    root = _require(HER2ST)
    assert read_slide(root, section="C6", hires_max_side=None).n_obs == 178
    col = SlideCollection.from_her2st(root, sections=["C5"], hires_max_side=None)
    assert col.ids == ["C5"] and col["C5"].n_obs == 181


def test_legacy_bad_spot_table(tmp_path):
    sel = pd.DataFrame({"x": [1, 2], "y": [1, 1], "pixel_x": [50.0, None], "pixel_y": [40.0, 40.0],
                        "selected": [1, 1]})
    paths = _write_legacy(tmp_path, selection=sel)
    with pytest.raises(SlideFormatError, match="S1_selection.tsv has missing or non-finite pixel_x"):
        read_st_legacy(*paths)
    paths = _write_legacy(tmp_path, selection=sel.drop(columns="pixel_y"))
    with pytest.raises(SlideFormatError, match="S1_selection.tsv lacks column\\(s\\) \\['pixel_y'\\]"):
        read_st_legacy(*paths)


@pytest.mark.slow
def test_read_her2st_missing_section(tmp_path):
    with pytest.raises(FileNotFoundError, match="HER2\\+ data folder"):
        read_her2st(tmp_path / "nowhere", "B4")
    root = _require(HER2ST)
    with pytest.raises(FileNotFoundError, match="Z1"):
        read_her2st(root, "Z1")


# ------------------------------------------------------------------------------------------------ Visium
def test_visium_1_0_0():
    folder = _require(VISIUM / "1.0.0")
    ad = read_visium(folder)
    assert ad.shape == (100, 100) and sp.isspmatrix_csr(ad.X) and ad.X.dtype == np.float32
    pos = pd.read_csv(folder / "spatial" / "tissue_positions_list.csv", header=None, index_col=0)
    bc = ad.obs_names[0]
    np.testing.assert_allclose(ad.obsm["spatial"][0], [pos.loc[bc, 5], pos.loc[bc, 4]])  # x = col, y = row
    assert ad.obs.loc[bc, "array_row"] == pos.loc[bc, 2] and ad.obs.loc[bc, "array_col"] == pos.loc[bc, 3]
    lib = ad.uns["spatial"]["1.0.0"]
    assert lib["scalefactors"]["tissue_hires_scalef"] == pytest.approx(0.150015)
    assert lib["images"]["hires"].shape == (2000, 2000, 3) and lib["images"]["lowres"].shape == (600, 600, 3)
    assert (ad.obs["in_tissue"] == 1).all()


def test_visium_space_ranger_2_header_positions(tmp_path):
    """Space Ranger ≥ 2 writes ``tissue_positions.csv`` with a header; the result must be the same."""
    src = _require(VISIUM / "1.0.0")
    dst = tmp_path / "sample"
    (dst / "spatial").mkdir(parents=True)
    shutil.copy(src / "filtered_feature_bc_matrix.h5", dst)
    shutil.copy(src / "spatial" / "scalefactors_json.json", dst / "spatial")
    pos = pd.read_csv(src / "spatial" / "tissue_positions_list.csv", header=None)
    pos.columns = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
    pos.to_csv(dst / "spatial" / "tissue_positions.csv", index=False)
    new, old = read_visium(dst), read_visium(src)
    np.testing.assert_array_equal(new.obsm["spatial"], old.obsm["spatial"])
    assert list(new.uns["spatial"]) == ["sample"] and new.uns["spatial"]["sample"]["images"] == {}
    assert read_slide(dst).n_obs == 100


@pytest.mark.filterwarnings("ignore:no spot positions")
def test_visium_2_1_0_probe_matrix_without_spatial():
    import h5py

    folder = _require(VISIUM / "2.1.0")
    with pytest.raises(FileNotFoundError, match="tissue_positions.csv") as info:
        read_visium(folder)
    assert "copy Space Ranger's spatial/ folder" in str(info.value)  # advice that works from the CLI too
    with pytest.raises(FileNotFoundError, match="tissue_positions"):
        read_slide(folder)
    with pytest.warns(UserWarning, match="raw_probe_bc_matrix.h5"):
        ad = read_visium(folder, require_spatial=False)
    # Expected: raw probe counts restricted to the filtered barcodes and probes, summed per gene.
    with h5py.File(folder / "raw_probe_bc_matrix.h5") as f:
        m = f["matrix"]
        raw = sp.csc_matrix((m["data"][:], m["indices"][:], m["indptr"][:]), shape=tuple(m["shape"][:]))
        keep_bc = m["filtered_barcodes"][:].astype(bool)
        keep_probe = m["features"]["filtered_probes"][:].astype(bool)
        n_genes = len(set(m["features"]["gene_id"][:][keep_probe]))
    assert ad.n_obs == keep_bc.sum() == 2348
    assert ad.n_vars == n_genes == 671
    assert ad.X.sum() == pytest.approx(raw[keep_probe][:, keep_bc].sum())
    assert "spatial" not in ad.obsm


def test_visium_fullres_image_too_small(tmp_path):
    from PIL import Image

    folder = _require(VISIUM / "1.0.0")
    small = tmp_path / "small.png"
    Image.new("RGB", (50, 40)).save(small)
    with pytest.raises(SlideFormatError, match="outside image .*small.png"):
        read_visium(folder, fullres_image=small)


# -------------------------------------------------------------------------------------------- legacy ST
def _write_legacy(folder: Path, counts: pd.DataFrame | None = None, selection: pd.DataFrame | None = None,
                  image_size=(200, 150)) -> tuple[Path, Path, Path]:
    """A tiny legacy-ST section: 3 spots × 2 genes, its selection file and a PNG image."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    if counts is None:
        counts = pd.DataFrame({"GA": [1, 0, 5], "GB": [2, 3, 0]}, index=["1x1", "2x1", "1x2"])
    if selection is None:
        selection = pd.DataFrame({"x": [1, 2, 1, 3], "y": [1, 1, 2, 3], "new_x": [1.0, 2.0, 1.0, 3.0],
                                  "new_y": [1.0, 1.0, 2.0, 3.0], "pixel_x": [50.0, 100.0, 50.0, 150.0],
                                  "pixel_y": [40.0, 40.0, 90.0, 120.0], "selected": [1, 1, 1, 0]})
    counts_path, sel_path, img_path = folder / "S1.tsv.gz", folder / "S1_selection.tsv", folder / "S1.png"
    with gzip.open(counts_path, "wt") as fh:
        counts.to_csv(fh, sep="\t")
    selection.to_csv(sel_path, sep="\t", index=False)
    Image.new("RGB", image_size, (240, 200, 220)).save(img_path)
    return counts_path, sel_path, img_path


def test_read_st_legacy_small(tmp_path):
    paths = _write_legacy(tmp_path)
    ad = read_st_legacy(*paths)
    assert ad.obs_names.tolist() == ["1x1", "2x1", "1x2"] and list(ad.var_names) == ["GA", "GB"]
    np.testing.assert_array_equal(ad.X.toarray(), [[1, 2], [0, 3], [5, 0]])
    np.testing.assert_array_equal(ad.obsm["spatial"], [[50, 40], [100, 40], [50, 90]])
    assert ad.obs["array_row"].tolist() == [1, 1, 2] and ad.obs["array_col"].tolist() == [1, 2, 1]
    assert list(ad.uns["spatial"]) == ["S1"] and ad.uns["spatial"]["S1"]["images"]["hires"].shape == (150, 200, 3)
    # the same slide through auto-detection: a folder and a tuple
    assert read_slide(tmp_path).obs_names.tolist() == ad.obs_names.tolist()
    assert read_slide(paths).n_obs == 3


def test_legacy_pixel_size_from_the_array_pitch(tmp_path):
    """Array neighbours are 200 µm apart (legacy ST): 50 px between them → 4 µm/px, 100 µm spots → 25 px."""
    ad = read_st_legacy(*_write_legacy(tmp_path))
    entry = ad.uns["spatial"]["S1"]
    assert entry["metadata"]["microns_per_pixel"] == pytest.approx(4.0)
    assert entry["scalefactors"]["spot_diameter_fullres"] == pytest.approx(25.0)
    # Jittered centres: the median neighbour distance, not the first pair, sets the scale.
    from stgraph.data.readers.legacy_st import array_microns_per_pixel

    rng = np.random.default_rng(0)
    xy = np.array([(x, y) for x in range(10) for y in range(10)])
    px = xy * 290.0 + rng.normal(0, 8, size=xy.shape)
    assert array_microns_per_pixel(xy, px) == pytest.approx(200 / 290, rel=0.02)
    assert array_microns_per_pixel(np.array([[0, 0], [5, 5]]), np.array([[0.0, 0], [9, 9]])) is None
    # A stated pixel size wins.
    assert read_st_legacy(*_write_legacy(tmp_path / "b"), microns_per_pixel=0.5).uns["spatial"]["S1"][
        "metadata"]["microns_per_pixel"] == 0.5


@pytest.mark.parametrize("which", [0, 1, 2])
def test_legacy_missing_files(tmp_path, which):
    paths = list(_write_legacy(tmp_path))
    paths[which].unlink()
    with pytest.raises(FileNotFoundError, match=paths[which].name):
        read_st_legacy(*paths)


def test_legacy_no_shared_spots(tmp_path):
    counts = pd.DataFrame({"GA": [1, 2]}, index=["7x7", "8x8"])
    paths = _write_legacy(tmp_path, counts=counts)
    with pytest.raises(SlideFormatError, match="no spot is both selected in .*S1_selection.tsv"):
        read_st_legacy(*paths)


def test_legacy_spot_outside_image(tmp_path):
    paths = _write_legacy(tmp_path, image_size=(80, 150))  # spot 2x1 at x = 100 ≥ width 80
    with pytest.raises(SlideFormatError, match="1 spot.* outside image .*S1.png"):
        read_st_legacy(*paths)


def test_legacy_undecodable_image(tmp_path):
    counts_path, sel_path, _ = _write_legacy(tmp_path)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"this is not a jpeg" * 10)
    with pytest.raises(SlideFormatError, match="junk.jpg"):
        read_st_legacy(counts_path, sel_path, junk)


def test_legacy_truncated_jpeg(tmp_path):
    from PIL import Image

    counts_path, sel_path, _ = _write_legacy(tmp_path)
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8)).save(good)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:400])  # header intact, pixel data cut short
    with pytest.raises(SlideFormatError, match="cut.jpg"):
        read_st_legacy(counts_path, sel_path, cut)


@pytest.mark.parametrize("bad, message", [(np.nan, "missing \\(NaN\\)"), (-1, "negative")])
def test_legacy_bad_counts(tmp_path, bad, message):
    counts = pd.DataFrame({"GA": [1.0, bad, 5.0], "GB": [2, 3, 0]}, index=["1x1", "2x1", "1x2"])
    paths = _write_legacy(tmp_path, counts=counts)
    with pytest.raises(SlideFormatError, match=f"S1.tsv.gz holds 1 {message}"):
        read_st_legacy(*paths)


def test_legacy_empty_slide(tmp_path):
    counts = pd.DataFrame({"GA": pd.Series([], dtype=int)})
    paths = _write_legacy(tmp_path, counts=counts)
    with pytest.raises(SlideFormatError, match="S1.tsv.gz is empty"):
        read_st_legacy(*paths)


def test_legacy_duplicate_barcodes(tmp_path):
    counts = pd.DataFrame({"GA": [1, 2, 3], "GB": [0, 0, 1]}, index=["1x1", "1x1", "2x1"])
    paths = _write_legacy(tmp_path, counts=counts)
    with pytest.raises(SlideFormatError, match="duplicate spot barcodes: \\['1x1'\\]"):
        read_st_legacy(*paths)


# ------------------------------------------------------------------------------------------- h5ad / CSV
def test_read_h5ad_roundtrip_and_validation(tmp_path):
    ad = make_synthetic_slide(n_rows=3, n_cols=3, n_genes=5, slide_id="s0")
    del ad.uns["spatial"]["s0"]["images"]["fullres"]  # keep the file small
    ad.write_h5ad(tmp_path / "ok.h5ad")
    back = read_slide(tmp_path / "ok.h5ad")
    assert back.shape == (9, 5) and set(back.obs["slide_id"]) == {"s0"}
    np.testing.assert_array_equal(back.obsm["spatial"], ad.obsm["spatial"])

    bad = ad.copy()
    bad.obsm["spatial"][0, 0] = np.nan
    bad.write_h5ad(tmp_path / "nan.h5ad")
    with pytest.raises(SlideFormatError, match="nan.h5ad.*non-finite"):
        read_h5ad(tmp_path / "nan.h5ad")
    del bad.obsm["spatial"]
    bad.write_h5ad(tmp_path / "nospatial.h5ad")
    with pytest.raises(SlideFormatError, match="nospatial.h5ad has no obsm\\['spatial'\\]"):
        read_h5ad(tmp_path / "nospatial.h5ad")
    with pytest.raises(FileNotFoundError, match="missing.h5ad"):
        read_h5ad(tmp_path / "missing.h5ad")


def test_read_spot_csv(tmp_path):
    from PIL import Image

    Image.new("RGB", (120, 100), "white").save(tmp_path / "he.png")
    pd.DataFrame({"barcode": ["a", "b"], "x": [10.0, 60.5], "y": [20.0, 70.0]}).to_csv(tmp_path / "s.csv", index=False)
    ad = read_spot_csv(tmp_path / "he.png", tmp_path / "s.csv")
    assert ad.shape == (2, 0) and sp.issparse(ad.X)
    assert ad.obs_names.tolist() == ["a", "b"] and set(ad.obs["slide_id"]) == {"he"}
    np.testing.assert_array_equal(ad.obsm["spatial"], [[10, 20], [60.5, 70]])
    assert ad.uns["spatial"]["he"]["metadata"]["source_image_path"] == str((tmp_path / "he.png").resolve())

    pd.DataFrame({"col": [1], "row": [2]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(SlideFormatError, match="bad.csv needs columns x,y or pixel_x,pixel_y"):
        read_spot_csv(tmp_path / "he.png", tmp_path / "bad.csv")
    pd.DataFrame({"pixel_x": [500.0], "pixel_y": [5.0]}).to_csv(tmp_path / "out.csv", index=False)
    with pytest.raises(SlideFormatError, match="outside image"):
        read_spot_csv(tmp_path / "he.png", tmp_path / "out.csv")


def test_read_slide_unknown_layout(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(SlideFormatError, match="looked for an .h5ad file, a Space Ranger folder"):
        read_slide(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_slide(tmp_path / "nowhere")


def test_read_slide_asks_the_reader_registry(tmp_path):
    from stgraph.data.readers import READERS

    assert {"h5ad", "visium", "her2st", "legacy_st", "spot_csv"} <= set(READERS.names())
    with pytest.raises(ValueError, match="unknown slide format 'nope'; valid choices"):
        read_slide(tmp_path, format="nope")
