"""Predict a cohort of whole slides: a sheet, a manifest, failures recorded, resumable, sharded over processes."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CONFIGS, tiny_overrides


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, synthetic_slides):
    """A tiny run trained on slides at 1 µm/px, and a sheet of six small whole slides: four with tissue, one
    blank (no tissue) and one corrupt file."""
    from stgraph.config import load_config
    from stgraph.data.wsi_synthetic import pink_texture, write_pyramidal_tiff
    from stgraph.training import train_model

    tmp = tmp_path_factory.mktemp("cohort_predict")
    slides = [s.copy() for s in synthetic_slides[:2]]
    for s in slides:
        for entry in s.uns["spatial"].values():
            entry["metadata"] = dict(entry.get("metadata", {}), microns_per_pixel=1.0)
    cfg = load_config(CONFIGS / "stgraph.yaml", tiny_overrides(tmp / "cache") + [
        "model.ridge.alpha_grid=[]", "model.ridge.gene_rank_grid=[]"])
    train_model(cfg, slides, out=tmp / "run")
    rng = np.random.default_rng(0)
    folder = tmp / "slides"
    folder.mkdir()
    rows = []
    for i, size in enumerate((600, 900, 500, 700)):
        img = np.full((1024, 1024, 3), 248, np.uint8)
        img[100:100 + size, 100:100 + size] = pink_texture((size, size), rng)
        write_pyramidal_tiff(folder / f"s{i}.tif", img, levels=2, mpp=1.0)
        rows.append((f"s{i}", f"s{i}.tif"))
    write_pyramidal_tiff(folder / "blank.tif", np.full((512, 512, 3), 250, np.uint8), levels=1, mpp=1.0)
    (folder / "broken.tif").write_bytes(b"II*\x00" + os.urandom(2000))
    rows += [("blank", "blank.tif"), ("broken", "broken.tif")]
    sheet = folder / "cohort.csv"
    sheet.write_text("slide_id,path\n" + "".join(f"{a},{b}\n" for a, b in rows))
    return tmp / "run", sheet


def _manifest(out: Path) -> dict[str, dict]:
    with open(out / "manifest.csv") as fh:
        return {r["slide_id"]: r for r in csv.DictReader(fh)}


def _cmd(run, sheet, out, *extra):
    return [sys.executable, "-m", "stgraph.cli", "predict", "--model", str(run), "--wsi-sheet", str(sheet),
            "--grid", "40", "--out", str(out), *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def test_a_cohort_records_every_slide_and_its_failures_and_resumes(cohort, tmp_path, capsys):
    from stgraph.cli.main import main

    run, sheet = cohort
    out = tmp_path / "preds"
    assert main(["predict", "--model", str(run), "--wsi-sheet", str(sheet), "--grid", "40", "--out", str(out)]) == 3
    printed = capsys.readouterr().out
    manifest = _manifest(out)
    assert [manifest[f"s{i}"]["status"] for i in range(4)] == ["done"] * 4
    assert manifest["blank"]["status"] == "failed" and "tissue" in manifest["blank"]["error"].lower()
    assert manifest["broken"]["status"] == "failed" and manifest["broken"]["error"]
    assert "4 predicted, 0 already done, 2 failed: blank" in printed and "broken" in printed
    assert sorted(p.name for p in out.iterdir()) == ["manifest.csv", "s0.h5ad", "s1.h5ad", "s2.h5ad", "s3.h5ad"]
    assert all(float(manifest[f"s{i}"]["seconds"]) > 0 and int(manifest[f"s{i}"]["spots"]) > 0 for i in range(4))
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5ad")}
    # a rerun skips what is done and retries only the failures
    assert main(["predict", "--model", str(run), "--wsi-sheet", str(sheet), "--grid", "40", "--out", str(out)]) == 3
    assert "0 predicted, 4 already done, 2 failed" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5ad")} == mtimes
    # as a kill leaves it: no manifest yet, the rows in a rank's part file; the rerun keeps them
    (out / "manifest.csv").rename(out / ".manifest.rank0.csv")
    assert main(["predict", "--model", str(run), "--wsi-sheet", str(sheet), "--grid", "40", "--out", str(out)]) == 3
    assert "0 predicted, 4 already done, 2 failed" in capsys.readouterr().out
    assert [_manifest(out)[f"s{i}"]["status"] for i in range(4)] == ["done"] * 4
    assert not list(out.glob(".manifest.rank*"))


def test_a_sheet_is_checked_whole_before_any_slide(cohort, tmp_path, capsys):
    from stgraph.cli.main import main

    run, sheet = cohort
    bad = tmp_path / "bad.csv"
    bad.write_text("slide_id,path\na,x.tif\na,y.tif\n")
    assert main(["predict", "--model", str(run), "--wsi-sheet", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "slide id 'a' repeats line 2" in capsys.readouterr().err
    bad.write_text("file\nx.tif\n")
    assert main(["predict", "--model", str(run), "--wsi-sheet", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "needs a 'path' column" in capsys.readouterr().err
    for bad_id in ("../outside", "manifest", ".hidden"):  # ids name files in the output folder, and only there
        bad.write_text(f"slide_id,path\n{bad_id},x.tif\n")
        assert main(["predict", "--model", str(run), "--wsi-sheet", str(bad), "--out", str(tmp_path / "o")]) == 2
        assert "cannot name an output file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "outside.h5ad").exists()


@pytest.mark.slow
def test_two_processes_predict_the_same_cohort_as_one(cohort, tmp_path):
    import anndata

    run, sheet = cohort
    one, two = tmp_path / "one", tmp_path / "two"
    assert subprocess.run(_cmd(run, sheet, one), env=_env(), capture_output=True, timeout=600).returncode == 3
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
              "stgraph.cli", *_cmd(run, sheet, two)[3:]]
    done = subprocess.run(launch, env=_env(), capture_output=True, text=True, timeout=600)
    assert "2 failed" in done.stdout, done.stdout[-2000:] + done.stderr[-3000:]
    m1, m2 = _manifest(one), _manifest(two)
    assert {k: v["status"] for k, v in m1.items()} == {k: v["status"] for k, v in m2.items()}
    assert {m2[f"s{i}"]["rank"] for i in range(4)} == {"0", "1"}  # both ranks worked
    for i in range(4):
        a, b = anndata.read_h5ad(one / f"s{i}.h5ad"), anndata.read_h5ad(two / f"s{i}.h5ad")
        np.testing.assert_allclose(a.X, b.X, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_cohort_killed_midway_and_rerun_predicts_each_slide_once(cohort, tmp_path):
    run, sheet = cohort
    out = tmp_path / "preds"
    proc = subprocess.Popen(_cmd(run, sheet, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(out.glob("*.h5ad"))) < 2:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5ad")}
    assert first and len(first) < 4, "the kill came after every slide was done: nothing to resume"
    done = subprocess.run(_cmd(run, sheet, out), env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 3, done.stderr[-2000:]
    manifest = _manifest(out)
    assert [manifest[f"s{i}"]["status"] for i in range(4)] == ["done"] * 4
    for name, mtime in first.items():  # finished before the kill: not predicted again
        assert (out / name).stat().st_mtime_ns == mtime
    assert sorted(p.name for p in out.iterdir()) == ["manifest.csv", "s0.h5ad", "s1.h5ad", "s2.h5ad", "s3.h5ad"]


def test_a_cohort_written_as_spatialdata_stores(cohort, tmp_path, capsys):
    """--format zarr: one SpatialData store per slide; a rerun finds the stores done."""
    sd = pytest.importorskip("spatialdata")
    from stgraph.cli.main import main

    run, sheet = cohort
    two = tmp_path / "two.csv"
    two.write_text("slide_id,path\n" + "".join(f"s{i},{sheet.parent / f's{i}.tif'}\n" for i in range(2)))
    out = tmp_path / "preds"
    args = ["predict", "--model", str(run), "--wsi-sheet", str(two), "--grid", "40", "--out", str(out),
            "--format", "zarr"]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["manifest.csv", "s0.zarr", "s1.zarr"]
    store = sd.read_zarr(out / "s0.zarr")
    assert int(_manifest(out)["s0"]["spots"]) == next(iter(store.tables.values())).n_obs
    assert main(args) == 0 and "0 predicted, 2 already done" in capsys.readouterr().out
