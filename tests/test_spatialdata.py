"""SpatialData in and out: ``read_slide(store.zarr)`` (circles, squares, cells; pixel frame and µm rules;
errors naming the store and the element), Visium parity with spatialdata-io, training on stores, and
``stgraph predict --out pred.zarr`` (read back, overlay, plot, --force)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("spatialdata")

from tests.conftest import CONFIGS, SHARED, tiny_overrides  # noqa: E402

MPP = 0.5  # µm per image pixel of the stores built here


def _write(sdata, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr's sharding note
        sdata.write(path)
    return path


def _table(slide, region: str, ids, order=None):
    """The slide's counts as a SpatialData table annotating ``region`` by the instance ids ``ids``."""
    from spatialdata.models import TableModel

    table = slide.copy()
    del table.uns["spatial"], table.obsm["spatial"]
    table.obs = table.obs.drop(columns=["slide_id"])
    table.obs["region"] = pd.Categorical([region] * table.n_obs)
    table.obs["cell_id"] = np.asarray(ids)
    if order is not None:
        table = table[order].copy()
    return TableModel.parse(table, region=region, region_key="region", instance_key="cell_id")


def _image(slide, cs: str, scale: float = MPP):
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity, Scale

    img = next(iter(slide.uns["spatial"].values()))["images"]["fullres"]
    tf = Identity() if scale == 1 else Scale([scale, scale], axes=("y", "x"))
    return Image2DModel.parse(np.ascontiguousarray(img.transpose(2, 0, 1)), dims=("c", "y", "x"),
                              transformations={cs: tf}, scale_factors=[2])


def make_store(slide, path: Path, cs: str = "microns", shuffle: bool = True) -> Path:
    """A SpatialData store of a synthetic slide: the H&E at MPP µm/px (a Scale into ``cs``), circles in µm
    whose index is not the table's row order, the table's rows in another order again."""
    import spatialdata as sd
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Identity

    n = slide.n_obs
    ids = np.arange(n) * 7 + 3
    shape_order = np.random.default_rng(0).permutation(n) if shuffle else np.arange(n)
    diameter = next(iter(slide.uns["spatial"].values()))["scalefactors"]["spot_diameter_fullres"]
    circles = ShapesModel.parse(slide.obsm["spatial"][shape_order] * MPP, geometry=0,
                                radius=np.full(n, diameter / 2 * MPP), index=ids[shape_order],
                                transformations={cs: Identity()})
    order = np.arange(n)[::-1] if shuffle else None
    sdata = sd.SpatialData(images={"he": _image(slide, cs)}, shapes={"spots": circles},
                           tables={"table": _table(slide, "spots", ids, order)})
    return _write(sdata, path)


def test_a_store_reads_as_the_slide_in_image_pixels(synthetic_slides, tmp_path):
    from stgraph.data.readers import READERS, read_slide

    slide = synthetic_slides[0]
    store = make_store(slide, tmp_path / "s0.zarr")
    assert READERS.get("spatialdata").detect(store, {})
    got = read_slide(store)
    assert got.n_obs == slide.n_obs and got.obs["slide_id"].iloc[0] == "s0"
    back = got[slide.obs_names]
    assert (back.X != slide.X).nnz == 0 and back.X.dtype == np.float32
    np.testing.assert_allclose(back.obsm["spatial"], slide.obsm["spatial"])
    entry = got.uns["spatial"]["s0"]
    assert entry["scalefactors"]["spot_diameter_fullres"] == pytest.approx(16.0)
    assert entry["metadata"]["microns_per_pixel"] == pytest.approx(MPP)
    assert entry["metadata"]["unit_shape"] == "circle"
    np.testing.assert_array_equal(entry["images"]["fullres"], slide.uns["spatial"]["slide0"]["images"]["fullres"])
    # the override wins; a coordinate system not named as µm gives no pixel size
    assert read_slide(store, microns_per_pixel=0.3).uns["spatial"]["s0"]["metadata"]["microns_per_pixel"] == 0.3
    plain = read_slide(make_store(slide, tmp_path / "plain.zarr", cs="global"), slide_id="x")
    assert "microns_per_pixel" not in plain.uns["spatial"]["x"]["metadata"]
    np.testing.assert_allclose(plain[slide.obs_names].obsm["spatial"], slide.obsm["spatial"])


def test_an_anndata_zarr_is_not_taken_for_a_store(synthetic_slides, tmp_path):
    from stgraph.data.readers.spatialdata import is_spatialdata_store

    path = tmp_path / "plain.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's note on zarr formats
        synthetic_slides[0].copy().write_zarr(path)
    assert not is_spatialdata_store(path)


def _polygon_store(path: Path, polygons, cs="global"):
    import anndata as ad
    import geopandas as gpd
    import scipy.sparse as sp
    import spatialdata as sd
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity

    n = len(polygons)
    shapes = ShapesModel.parse(gpd.GeoDataFrame(geometry=polygons, index=np.arange(n) + 10),
                               transformations={cs: Identity()})
    table = ad.AnnData(sp.csr_matrix(np.arange(1, 2 * n + 1, dtype=np.float32).reshape(n, 2)),
                       obs=pd.DataFrame({"region": pd.Categorical(["units"] * n), "id": np.arange(n) + 10},
                                        index=[f"u{i}" for i in range(n)]))
    table = TableModel.parse(table, region="units", region_key="region", instance_key="id")
    image = Image2DModel.parse(np.full((3, 64, 64), 200, np.uint8), dims=("c", "y", "x"),
                               transformations={cs: Identity()})
    return _write(sd.SpatialData(images={"he": image}, shapes={"units": shapes}, tables={"t": table}), path)


def test_polygons_become_centroids_with_areas_and_squares_bins(tmp_path):
    from shapely.geometry import Polygon, box

    from stgraph.data.readers import read_slide

    cells = [Polygon([(0, 0), (6, 0), (0, 6)]), box(10, 20, 14, 22), Polygon([(30, 30), (40, 30), (40, 40), (30, 40),
                                                                               (35, 35)])]
    got = read_slide(_polygon_store(tmp_path / "cells.zarr", cells), microns_per_pixel=0.5)
    np.testing.assert_allclose(got.obsm["spatial"], [[2, 2], [12, 21], [cells[2].centroid.x, cells[2].centroid.y]])
    np.testing.assert_allclose(got.obs["unit_area_px2"], [18, 8, 75])
    np.testing.assert_allclose(got.obs["unit_area_um2"], [4.5, 2, 18.75])
    meta, sf = got.uns["spatial"]["cells"]["metadata"], got.uns["spatial"]["cells"]["scalefactors"]
    assert meta["unit_shape"] == "polygon"
    assert sf["spot_diameter_fullres"] == pytest.approx(2 * np.sqrt(18 / np.pi))  # of the median area
    np.testing.assert_array_equal(got.X.toarray(), [[1, 2], [3, 4], [5, 6]])

    bins = [box(x, y, x + 8, y + 8) for x, y in ((0, 0), (8, 0), (16, 40))]
    got = read_slide(_polygon_store(tmp_path / "bins.zarr", bins, cs="um"))
    np.testing.assert_allclose(got.obsm["spatial"], [[4, 4], [12, 4], [20, 44]])
    meta, sf = got.uns["spatial"]["bins"]["metadata"], got.uns["spatial"]["bins"]["scalefactors"]
    assert meta["unit_shape"] == "square" and meta["bin_size_px"] == sf["spot_diameter_fullres"] == 8
    assert meta["microns_per_pixel"] == 1.0 and meta["bin_size_um"] == 8
    assert "unit_area_px2" not in got.obs


def test_a_table_annotating_labels_gives_cells_at_their_centroids_with_their_areas(tmp_path):
    """A segmentation mask (as spatialdata-io's Xenium reader writes) at half the image's resolution: each label
    id a cell at the centroid of its pixels, mapped onto the image by the labels' transformation."""
    import anndata as ad
    import scipy.sparse as sp
    import spatialdata as sd
    from spatialdata.models import Image2DModel, Labels2DModel, TableModel
    from spatialdata.transformations import Identity, Scale

    from stgraph.data.errors import SlideFormatError
    from stgraph.data.readers import read_slide

    mask = np.zeros((64, 64), np.int32)
    mask[10:20, 20:30] = 5  # a 10 × 10 square: centroid (25, 15) in mask pixels
    yy, xx = np.mgrid[:64, :64]
    disk = (yy - 40) ** 2 + (xx - 40) ** 2 <= 36
    mask[disk] = 9
    mask[60, 3] = 2  # one pixel
    labels = Labels2DModel.parse(mask, dims=("y", "x"), transformations={"global": Scale([2, 2], axes=("y", "x"))},
                                 scale_factors=[2])
    image = Image2DModel.parse(np.full((3, 128, 128), 200, np.uint8), dims=("c", "y", "x"),
                               transformations={"global": Identity()})
    ids = [9, 2, 5]
    table = ad.AnnData(sp.csr_matrix(np.array([[1, 0], [0, 2], [3, 3]], np.float32)),
                       obs=pd.DataFrame({"region": pd.Categorical(["cell_labels"] * 3), "cell_id": ids},
                                        index=["a", "b", "c"]))
    table = TableModel.parse(table, region="cell_labels", region_key="region", instance_key="cell_id")
    path = _write(sd.SpatialData(images={"he": image}, labels={"cell_labels": labels}, tables={"table": table}),
                  tmp_path / "xenium_like.zarr")
    got = read_slide(path, microns_per_pixel=0.2125)
    ys, xs = np.nonzero(disk)
    np.testing.assert_allclose(got.obsm["spatial"], 2 * np.array([[xs.mean() + 0.5, ys.mean() + 0.5],
                                                                  [3.5, 60.5], [25.0, 15.0]]))
    np.testing.assert_allclose(got.obs["unit_area_px2"], 4 * np.array([disk.sum(), 1, 100]))
    np.testing.assert_array_equal(got.X.toarray(), [[1, 0], [0, 2], [3, 3]])
    assert got.uns["spatial"]["xenium_like"]["metadata"]["unit_shape"] == "polygon"
    # read in blocks of a row each: the same cells (the blocks' sums meet across rows)
    from stgraph.data.readers.spatialdata import _label_geometry

    whole, blocks = _label_geometry(labels, "m"), _label_geometry(labels, "m", block_pixels=64)
    for a, b in zip(whole, blocks):
        np.testing.assert_allclose(a, b)

    table.obs["cell_id"] = [9, 2, 77]  # a row whose label is not in the mask
    path = _write(sd.SpatialData(images={"he": image}, labels={"cell_labels": labels}, tables={"table": table}),
                  tmp_path / "missing.zarr")
    with pytest.raises(SlideFormatError, match=r"missing\.zarr, element 'cell_labels'.*1 table row\(s\) have no "
                                               r"shape with their 'cell_id', e\.g\. \[77\]"):
        read_slide(path)


def test_errors_name_the_store_and_the_element(synthetic_slides, tmp_path):
    import spatialdata as sd
    from spatialdata.models import Labels2DModel, TableModel
    from spatialdata.transformations import Identity, Scale

    from stgraph.data.errors import SlideFormatError
    from stgraph.data.readers import read_slide

    slide = synthetic_slides[0]
    base = sd.read_zarr(make_store(slide, tmp_path / "base.zarr"))
    circles, image, table = base.shapes["spots"], base.images["he"], base.tables["table"]

    two = _write(sd.SpatialData(images={"he": image}, shapes={"spots": circles},
                                tables={"counts": table, "other": table.copy()}), tmp_path / "two.zarr")
    with pytest.raises(SlideFormatError, match=r"two\.zarr has 2 tables \('counts', 'other'\).*table=NAME"):
        read_slide(two)
    assert read_slide(two, table="other").n_obs == slide.n_obs
    with pytest.raises(SlideFormatError, match=r"two\.zarr has no table 'nope'; its tables: 'counts', 'other'"):
        read_slide(two, table="nope")

    loose = table.copy()
    del loose.uns["spatialdata_attrs"]
    loose = TableModel.parse(loose)
    path = _write(sd.SpatialData(images={"he": image}, shapes={"spots": circles}, tables={"loose": loose}),
                  tmp_path / "loose.zarr")
    with pytest.raises(SlideFormatError, match=r"table 'loose' of SpatialData store .*loose\.zarr annotates no element"):
        read_slide(path)

    path = _write(sd.SpatialData(shapes={"spots": circles}, tables={"table": table}), tmp_path / "noimage.zarr")
    with pytest.raises(SlideFormatError, match=r"noimage\.zarr has no image: stgraph predicts"):
        read_slide(path)

    apart = sd.deepcopy(image)
    sd.transformations.set_transformation(apart, {"elsewhere": Scale([MPP, MPP], axes=("y", "x"))},
                                          set_all=True)
    path = _write(sd.SpatialData(images={"he": apart}, shapes={"spots": circles}, tables={"table": table}),
                  tmp_path / "apart.zarr")
    with pytest.raises(SlideFormatError, match=r"apart\.zarr, element 'spots' and image 'he': the element and the "
                                               r"image share no coordinate system"):
        read_slide(path)

    labels = Labels2DModel.parse(np.zeros((64, 64), np.int32), dims=("y", "x"), transformations={"microns": Identity()})
    on_labels = table.copy()
    on_labels.obs["region"] = pd.Categorical(["cells"] * on_labels.n_obs)
    on_labels.uns["spatialdata_attrs"]["region"] = "cells"
    path = _write(sd.SpatialData(images={"he": image}, labels={"cells": labels}, tables={"table": on_labels}),
                  tmp_path / "labels.zarr")
    with pytest.raises(SlideFormatError, match=r"labels\.zarr, element 'cells'.*the labels hold no cell"):
        read_slide(path)


def test_a_spatialdata_io_visium_store_reads_as_read_visium(tmp_path):
    """spatialdata_io.visium on a Space Ranger folder, written to zarr, reads as stgraph's read_visium."""
    spatialdata_io = pytest.importorskip("spatialdata_io")
    from stgraph.data.readers import read_slide, read_visium

    folder = SHARED / "data" / "visium_tiny" / "1.0.0"
    if not folder.is_dir():
        pytest.skip(f"shared data not found at {folder}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata = spatialdata_io.visium(folder, dataset_id="tiny")  # the counts file names no library id
    store = _write(sdata, tmp_path / "tiny.zarr")
    ours = read_visium(folder)
    got = read_slide(store, image="tiny_hires_image")[ours.obs_names]
    assert abs(got.X - ours.X).max() == 0 and list(got.var_names) == list(ours.var_names)
    np.testing.assert_allclose(got.obsm["spatial"], ours.obsm["spatial"])
    a, b = got.uns["spatial"]["tiny"], ours.uns["spatial"]["1.0.0"]
    for key in ("spot_diameter_fullres", "tissue_hires_scalef"):
        assert a["scalefactors"][key] == pytest.approx(b["scalefactors"][key], rel=1e-6)
    assert a["metadata"]["microns_per_pixel"] == pytest.approx(b["metadata"]["microns_per_pixel"], rel=1e-6)
    np.testing.assert_array_equal(a["images"]["hires"], b["images"]["hires"])


def _with_mpp(slides):
    out = []
    for s in slides:
        s = s.copy()
        for entry in s.uns["spatial"].values():
            entry["metadata"] = dict(entry.get("metadata", {}), microns_per_pixel=MPP)
        out.append(s)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_slides):
    """Two tiny runs: one on the synthetic slides (given MPP µm/px), one on the same slides read from stores."""
    from stgraph.config import load_config
    from stgraph.config.load import IgnoredOptionWarning
    from stgraph.data.readers import read_slide
    from stgraph.training import train_model

    tmp = tmp_path_factory.mktemp("spatialdata_runs")
    stores = [make_store(s, tmp / f"{s.obs['slide_id'].iloc[0]}.zarr") for s in synthetic_slides]
    from_stores = [read_slide(p) for p in stores]
    originals = _with_mpp(synthetic_slides)
    runs = {}
    for name, slides in (("anndata", originals), ("stores", from_stores)):
        with warnings.catch_warnings():  # the tiny overrides shrink options the ridge does not read
            warnings.simplefilter("ignore", IgnoredOptionWarning)
            cfg = load_config(CONFIGS / "stgraph.yaml", tiny_overrides(tmp / f"cache_{name}") + [
                "model.ridge.alpha_grid=[]", "model.ridge.gene_rank_grid=[]"])
        runs[name] = train_model(cfg, slides[:2], out=tmp / f"run_{name}")
    return runs, originals, stores


def test_training_on_stores_equals_training_on_the_slides(trained):
    from stgraph.data.readers import read_slide
    from stgraph.inference import predict_slide

    runs, originals, stores = trained
    query = originals[2]
    a = predict_slide(runs["anndata"], query)
    b = predict_slide(runs["stores"], read_slide(stores[2]))[query.obs_names]
    assert list(a.var_names) == list(b.var_names)
    np.testing.assert_allclose(b.X, a.X, rtol=1e-5, atol=1e-5)


def test_predict_to_a_zarr_store_reads_back_overlays_and_plots(trained, tmp_path):
    import anndata
    import spatialdata as sd

    from stgraph.cli.main import main

    runs, originals, stores = trained
    run = str(runs["anndata"].run_dir)
    query = tmp_path / "query.h5ad"
    originals[2].write_h5ad(query)
    assert main(["predict", "--model", run, "--slide", str(query), "--out", str(tmp_path / "pred.h5ad")]) == 0
    assert main(["predict", "--model", run, "--slide", str(query), "--out", str(tmp_path / "pred.zarr")]) == 0
    h5ad = anndata.read_h5ad(tmp_path / "pred.h5ad")
    sdata = sd.read_zarr(tmp_path / "pred.zarr")
    table = sdata.tables["table"]
    assert list(table.obs_names) == list(h5ad.obs_names) and list(table.var_names) == list(h5ad.var_names)
    np.testing.assert_allclose(table.X, h5ad.X)
    assert table.uns["stgraph"]["method"] == h5ad.uns["stgraph"]["method"]
    assert sdata.attrs["stgraph"]["slide_id"] == "slide2"
    circles = sdata.shapes["spots"]
    first = table.obs["instance_id"].iloc[0]
    point = circles.geometry.loc[first]
    np.testing.assert_allclose([point.x, point.y], h5ad.obsm["spatial"][0])
    assert circles["radius"].iloc[0] == pytest.approx(8.0)  # spot_diameter_fullres / 2
    pixels = originals[2].uns["spatial"]["slide2"]["images"]["fullres"]
    np.testing.assert_array_equal(np.asarray(sdata.images["he"].transpose("y", "x", "c")), pixels)
    assert "slide2" in sd.transformations.get_transformation(circles, get_all=True)
    # read back as a slide by stgraph's own reader: the shapes land where the prediction's spots are
    from stgraph.data.readers import read_slide

    with pytest.warns(UserWarning, match="non-integer"):  # predicted log1p values, not counts
        again = read_slide(tmp_path / "pred.zarr")
    np.testing.assert_allclose(again.obsm["spatial"], h5ad.obsm["spatial"])
    # the same command from a store query
    assert main(["predict", "--model", run, "--slide", str(stores[2]), "--out", str(tmp_path / "from_store.zarr")]) == 0
    assert sd.read_zarr(tmp_path / "from_store.zarr").tables["table"].n_obs == h5ad.n_obs


def test_a_prediction_store_plots_headless_with_spatialdata_plot(trained, tmp_path):
    pytest.importorskip("spatialdata_plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import spatialdata as sd
    import spatialdata_plot  # noqa: F401  (registers the .pl accessor)

    from stgraph import write_spatialdata
    from stgraph.inference import predict_slide

    runs, originals, _ = trained
    pred = predict_slide(runs["anndata"], originals[2])
    sdata = sd.read_zarr(write_spatialdata(pred, tmp_path / "pred.zarr"))
    gene = str(pred.var_names[0])
    png = tmp_path / "gene.png"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # spatialdata-plot's own use of matplotlib
        sdata.pl.render_images("he").pl.render_shapes("spots", color=gene, table_name="table").pl.show(
            coordinate_systems="slide2", save=png)
    plt.close("all")
    assert png.is_file() and png.stat().st_size > 1000


def test_force_replaces_only_a_store_stgraph_wrote(trained, synthetic_slides, tmp_path, capsys):
    from stgraph import write_spatialdata
    from stgraph.cli.main import main
    from stgraph.inference import predict_slide
    from stgraph.utils.io import DestinationError

    runs, originals, stores = trained
    run = str(runs["anndata"].run_dir)
    query = tmp_path / "query.h5ad"
    originals[2].write_h5ad(query)
    out = tmp_path / "pred.zarr"
    args = ["predict", "--model", run, "--slide", str(query), "--out", str(out)]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    assert "pred.zarr already exists (use --force" in capsys.readouterr().err
    (out / "marker").write_text("old")
    assert main(args + ["--force"]) == 0
    assert not (out / "marker").exists() and (out / "zarr.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pred.zarr")]  # no temporary left
    theirs = make_store(synthetic_slides[1], tmp_path / "theirs.zarr")
    capsys.readouterr()
    assert main(["predict", "--model", run, "--slide", str(query), "--out", str(theirs), "--force"]) == 2
    assert "not an output stgraph wrote" in capsys.readouterr().err
    assert (theirs / "tables").is_dir()
    # the Python API: the same refusals
    pred = predict_slide(runs["anndata"], originals[2])
    with pytest.raises(FileExistsError, match="pred.zarr already exists"):
        write_spatialdata(pred, out)
    with pytest.raises(DestinationError, match="not an output stgraph wrote"):
        write_spatialdata(pred, theirs, force=True)
    folder = tmp_path / "mine.zarr"
    folder.mkdir()
    with pytest.raises(DestinationError, match="not an output stgraph wrote"):
        write_spatialdata(pred, folder, force=True)
    write_spatialdata(pred, out, force=True)


def test_units_become_circles_squares_or_polygons(synthetic_slides, tmp_path):
    import spatialdata as sd
    from shapely.geometry import box

    from stgraph import write_spatialdata

    pred = synthetic_slides[0].copy()
    pred.X = np.log1p(pred.X.toarray())
    pred.uns["stgraph"] = {"model": "test", "none": None, "folds": ["a", "b"]}
    meta = pred.uns["spatial"]["slide0"]["metadata"]
    meta.update(microns_per_pixel=2.0, grid_lattice="square", grid_pitch_um=40.0)
    grid = sd.read_zarr(write_spatialdata(pred, tmp_path / "grid.zarr", image=False))
    squares = grid.shapes["grid"]
    assert not grid.images and set(squares.geometry.geom_type) == {"Polygon"}
    np.testing.assert_allclose(squares.geometry.area, 20.0 ** 2)  # 40 µm pitch at 2 µm/px
    assert list(grid.tables["table"].uns["stgraph"]["folds"]) == ["a", "b"]
    assert "none" not in grid.tables["table"].uns["stgraph"]

    outlines = {name: box(x - 3, y - 2, x + 3, y + 2) for name, (x, y) in zip(pred.obs_names, pred.obsm["spatial"])}
    import geopandas as gpd

    cells = sd.read_zarr(write_spatialdata(pred, tmp_path / "cells.zarr",
                                           polygons=gpd.GeoSeries(outlines)))
    np.testing.assert_allclose(cells.shapes["cells"].geometry.area, 24.0)


def test_a_whole_slide_prediction_on_a_square_grid_writes_squares(trained, tmp_path):
    import spatialdata as sd

    from stgraph.cli.main import main
    from stgraph.data.wsi_synthetic import pink_texture, write_pyramidal_tiff

    runs, _, _ = trained
    img = np.full((512, 512, 3), 248, np.uint8)
    img[64:448, 64:448] = pink_texture((384, 384), np.random.default_rng(0))
    write_pyramidal_tiff(tmp_path / "w.tif", img, levels=1, mpp=MPP)
    out = tmp_path / "w.zarr"
    assert main(["predict", "--model", str(runs["anndata"].run_dir), "--wsi", str(tmp_path / "w.tif"),
                 "--grid", "40", "--min-tissue-area", "1000", "--out", str(out)]) == 0
    sdata = sd.read_zarr(out)
    squares = sdata.shapes["grid"]
    assert len(squares) == sdata.tables["table"].n_obs > 0
    np.testing.assert_allclose(squares.geometry.area, (40 / MPP) ** 2)  # the 40 µm pitch at 0.5 µm/px
    assert "he" in sdata.images


def test_a_failed_write_leaves_the_old_store_and_no_temporary(synthetic_slides, tmp_path, monkeypatch):
    import spatialdata as sd

    from stgraph import write_spatialdata

    pred = synthetic_slides[0].copy()
    pred.uns["stgraph"] = {"model": "test"}
    out = write_spatialdata(pred, tmp_path / "p.zarr")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    def fail(self, path, **kwargs):
        (Path(path) / "half").mkdir(parents=True)
        raise OSError("disk gone")

    monkeypatch.setattr(sd.SpatialData, "write", fail)
    with pytest.raises(OSError, match="disk gone"):
        write_spatialdata(pred, out, force=True)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.zarr"]
    # a temporary folder left by a killed writer (a pid that is not alive) goes at the next write
    dead = tmp_path / ".p.zarr.999999999-abc.tmp"
    (dead / "p.zarr").mkdir(parents=True)
    monkeypatch.undo()
    write_spatialdata(pred, out, force=True)
    assert not dead.exists()


def test_the_command_line_trains_on_stores(trained, tmp_path):
    """`stgraph train --data a.zarr b.zarr` reads the stores as slides: the run equals the one trained in Python."""
    import anndata

    from stgraph.cli.main import main
    from stgraph.data.readers import read_slide
    from stgraph.inference import predict_slide

    runs, _, stores = trained
    over = tiny_overrides(tmp_path / "cache") + ["model.ridge.alpha_grid=[]", "model.ridge.gene_rank_grid=[]"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["train", "--config", str(CONFIGS / "stgraph.yaml"), "--data", *map(str, stores[:2]),
                     "--out", str(tmp_path / "run"), *over]) == 0
        assert main(["predict", "--model", str(tmp_path / "run"), "--slide", str(stores[2]),
                     "--out", str(tmp_path / "pred.h5ad")]) == 0
    written = anndata.read_h5ad(tmp_path / "pred.h5ad")
    expected = predict_slide(runs["stores"], read_slide(stores[2]))[written.obs_names]
    np.testing.assert_allclose(written.X, expected.X, rtol=1e-5, atol=1e-5)
