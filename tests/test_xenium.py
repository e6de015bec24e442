"""A Xenium bundle through spatialdata-io: cells (the segmentation labels) with their aligned H&E, read into
stgraph, trained on and predicted from at cell level.

The bundle is written here from a synthetic slide (image → expression signal): its spots become cells, the
H&E becomes ``he_image.ome.tif`` with an ``he_imagealignment.csv`` (an affine with a translation into the
morphology pixels), and the cells are disks in the ``cells.zarr.zip`` mask, as Xenium Analyzer 1.2 writes them
(integer cell ids = label values)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("spatialdata_io")

from tests.conftest import CONFIGS, tiny_overrides  # noqa: E402
from tests.test_visium_hd import _write_10x_h5  # noqa: E402

HE_MPP = 0.5           # µm per H&E pixel
MORPH_MPP = 0.2125     # µm per morphology pixel (experiment.xenium's pixel_size)
SHIFT = (13.0, 7.0)    # the H&E's offset in the morphology frame (pixels)
RADIUS = 6             # cell disk radius, morphology pixels


def write_xenium_bundle(slide, folder: Path) -> Path:
    """A minimal Xenium output folder of ``slide`` (spots as cells) that ``spatialdata_io.xenium`` reads."""
    import tifffile
    import zarr

    folder.mkdir(parents=True)
    n = slide.n_obs
    he = next(iter(slide.uns["spatial"].values()))["images"]["fullres"]
    s = HE_MPP / MORPH_MPP
    centre = slide.obsm["spatial"] * s + np.asarray(SHIFT)  # morphology pixels
    ids = np.arange(1, n + 1)
    (folder / "experiment.xenium").write_text(json.dumps({
        "pixel_size": MORPH_MPP, "analysis_sw_version": "xenium-1.2.0", "run_name": "synthetic",
        "region_name": folder.name}))
    side = int(np.ceil(max(he.shape[:2]) * s + max(SHIFT) + 2 * RADIUS))
    mask = np.zeros((side, side), np.uint32)
    yy, xx = np.mgrid[:side, :side]
    for i, (cx, cy) in zip(ids, np.round(centre).astype(int)):
        box = (slice(cy - RADIUS, cy + RADIUS + 1), slice(cx - RADIUS, cx + RADIUS + 1))
        disk = (yy[box] - cy) ** 2 + (xx[box] - cx) ** 2 <= RADIUS ** 2
        mask[box][disk] = i
    store = zarr.storage.ZipStore(folder / "cells.zarr.zip", mode="w")
    group = zarr.open_group(store, mode="w")
    group.create_array("masks/0", data=mask)  # nuclei: the same disks
    group.create_array("masks/1", data=mask)
    store.close()
    area = np.full(n, np.pi * (RADIUS * MORPH_MPP) ** 2)
    pd.DataFrame({"cell_id": ids, "x_centroid": centre[:, 0] * MORPH_MPP, "y_centroid": centre[:, 1] * MORPH_MPP,
                  "transcript_counts": np.asarray(slide.X.sum(1)).ravel().astype(int), "cell_area": area,
                  "nucleus_area": area / 2}).to_parquet(folder / "cells.parquet")
    counts = slide.X.toarray() if hasattr(slide.X, "toarray") else np.asarray(slide.X)
    _write_10x_h5(folder / "cell_feature_matrix.h5", counts.astype(int), [str(i) for i in ids],
                  list(slide.var_names))
    tifffile.imwrite(folder / "he_image.ome.tif", np.ascontiguousarray(he), photometric="rgb")  # (y, x, 3)
    alignment = np.array([[s, 0, SHIFT[0]], [0, s, SHIFT[1]], [0, 0, 1]])
    pd.DataFrame(alignment).to_csv(folder / "he_imagealignment.csv", header=False, index=False)
    return folder


def xenium_store(slide, tmp: Path, name: str) -> Path:
    """The bundle read by spatialdata-io (labels, table, aligned H&E) and written as a store."""
    import spatialdata_io

    bundle = write_xenium_bundle(slide, tmp / f"{name}_outs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata = spatialdata_io.xenium(bundle, cells_boundaries=False, nucleus_boundaries=False, nucleus_labels=False,
                                      transcripts=False, morphology_mip=False, morphology_focus=False)
        path = tmp / f"{name}.zarr"
        sdata.write(path)
    return path


def test_a_xenium_bundle_reads_as_cells_on_its_aligned_h_and_e(tmp_path, synthetic_slides):
    from stgraph.data import read_slide

    slide = synthetic_slides[0]
    path = xenium_store(slide, tmp_path, "xen")
    cells = read_slide(path, image="he_image", microns_per_pixel=HE_MPP)
    assert cells.n_obs == slide.n_obs
    # every cell on its spot, in the H&E's pixels (the disk's centroid: within a morphology pixel)
    order = np.argsort(cells.obs["cell_id"].astype(int).to_numpy())
    np.testing.assert_allclose(cells.obsm["spatial"][order], slide.obsm["spatial"], atol=MORPH_MPP / HE_MPP * 1.5)
    np.testing.assert_array_equal(cells.X.toarray()[order], slide.X.toarray())
    meta = next(iter(cells.uns["spatial"].values()))["metadata"]
    assert meta["unit_shape"] == "polygon" and meta["spatialdata_element"] == "cell_labels"
    assert meta["microns_per_pixel"] == HE_MPP


def test_a_cell_level_model_trained_on_xenium_stores_beats_the_mean_profile(tmp_path, synthetic_slides):
    """Train on two Xenium stores and predict the third from its H&E, through the command line: the per-gene
    correlation beats the mean profile (which has none) on data whose expression follows the image."""
    import anndata

    from cli.main import main

    stores = [xenium_store(s, tmp_path, f"x{i}") for i, s in enumerate(synthetic_slides)]
    read = ["--read", "image=he_image", "--read", f"microns_per_pixel={HE_MPP}"]
    run = tmp_path / "run"
    assert main(["train", "--config", str(CONFIGS / "stgraph.yaml"), "--data", str(stores[0]), str(stores[1]),
                 *read, "--out", str(run), *tiny_overrides(tmp_path / "cache"), "data.harmony=false"]) == 0
    out = tmp_path / "pred.h5ad"
    assert main(["predict", "--model", str(run), "--slide", str(stores[2]), *read, "--out", str(out)]) == 0
    pred = anndata.read_h5ad(out)
    truth = synthetic_slides[2]
    genes = [g for g in pred.var_names if g in truth.var_names]
    cell = pred.obs_names.astype(int).to_numpy() - 1  # the table's rows are named by cell id
    p = np.asarray(pred[:, genes].X.toarray() if hasattr(pred.X, "toarray") else pred[:, genes].X)
    t = np.log1p(truth[cell, genes].X.toarray())
    pc, tc = p - p.mean(0), t - t.mean(0)
    ok = (pc.std(0) > 0) & (tc.std(0) > 0)
    r = (pc * tc).sum(0)[ok] / np.sqrt((pc ** 2).sum(0)[ok] * (tc ** 2).sum(0)[ok])
    print("cell-level mean per-gene r on the held-out Xenium store", float(np.mean(r)), ok.sum())
    assert ok.sum() >= 10 and float(np.mean(r)) > 0.2, float(np.mean(r))  # the mean profile's r is 0 (constant)
