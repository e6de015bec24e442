"""Whole-slide prediction: `stgraph predict --wsi`, physical resolution, streaming, caching, bad input."""
import json
import logging
from pathlib import Path

import anndata
import numpy as np
import pytest

from cli.main import main
from stgraph.data.wsi_synthetic import pink_texture, write_pyramidal_tiff


def _tissue_image(h=1024, w=1024, seed=0, radius=400):
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 248, np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    disc = (xx - w // 2) ** 2 + (yy - h // 2) ** 2 <= radius**2
    img[disc] = pink_texture((h, w), rng)[disc]
    return img


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, synthetic_slides):
    """A tiny run trained on slides at 1 µm/px with 32 px patches (so 32 µm patches)."""
    from stgraph.config import load_config
    from stgraph.training import train_model
    from tests.conftest import CONFIGS, tiny_overrides

    slides = [s.copy() for s in synthetic_slides[:2]]
    for s in slides:
        for entry in s.uns["spatial"].values():
            entry["metadata"] = dict(entry.get("metadata", {}), microns_per_pixel=1.0)
    tmp = tmp_path_factory.mktemp("wsirun")
    cfg = load_config(CONFIGS / "heclip.yaml", tiny_overrides(tmp / "cache", epochs=1) + ["data.harmony=false"])
    train_model(cfg, slides, out=tmp / "run")
    return tmp / "run"


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wsis")
    img = _tissue_image()
    return {
        "a": write_pyramidal_tiff(tmp / "a.tif", img, levels=3, mpp=0.5),
        "b": write_pyramidal_tiff(tmp / "b.tif", _tissue_image(seed=1), levels=3, mpp=0.5),
        "nompp": write_pyramidal_tiff(tmp / "nompp.tif", img, levels=3, mpp=None, flavour="none"),
        "blank": write_pyramidal_tiff(tmp / "blank.tif", np.full((512, 512, 3), 248, np.uint8), levels=2, mpp=0.5),
    }


def test_run_records_its_physical_resolution(run_dir):
    from stgraph.inference import load_run

    info = json.loads((run_dir / "run.json").read_text())["resolution"]
    assert info["microns_per_pixel"] == 1.0 and info["patch_size"] == 32
    assert info["patch_um"] == pytest.approx(32.0) and info["patch_mpp"] == pytest.approx(1.0)
    assert load_run(run_dir).resolution == info


def test_cli_predicts_a_wsi_into_a_plottable_visium_like_anndata(run_dir, slides, tmp_path, capsys):
    out = tmp_path / "pred.h5ad"
    rc = main(["predict", "--model", str(run_dir), "--wsi", str(slides["a"]), "--out", str(out), "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    pred = anndata.read_h5ad(out)
    assert pred.n_obs > 10 and pred.n_vars > 0
    assert np.isfinite(pred.X).all() and (pred.X >= 0).all()
    assert {"array_row", "array_col"} <= set(pred.obs.columns)
    entry = pred.uns["spatial"]["a"]
    # Visium spots of 55 µm at 0.5 µm/px.
    assert entry["scalefactors"]["spot_diameter_fullres"] == pytest.approx(110.0)
    assert entry["images"]["hires"].ndim == 3 and entry["scalefactors"]["tissue_hires_scalef"] > 0
    prov = pred.uns["stgraph"]
    # Trained at 1 µm/px, the 0.5 µm/px slide is read from level 1 (2× downsample), 32 µm patches.
    assert prov["resample_factor"] == pytest.approx(2.0) and prov["level"] == 1
    assert prov["patch_um"] == pytest.approx(32.0) and prov["target_mpp"] == pytest.approx(1.0)
    import matplotlib
    import scanpy as sc

    matplotlib.use("Agg")
    axes = sc.pl.spatial(pred, img_key="hires", color=pred.var_names[0], show=False)
    assert len(axes) == 1
    import matplotlib.pyplot as plt

    plt.close("all")


def test_resampling_matches_a_slide_scanned_at_the_training_resolution(run_dir, tmp_path):
    """The same tissue scanned at 0.5 µm/px and at 1 µm/px gives (nearly) the same prediction."""
    from stgraph.data.wsi_synthetic import block_mean
    from stgraph.inference import load_run
    from stgraph.inference.wsi import predict_wsi

    img = _tissue_image(seed=3)
    fine = write_pyramidal_tiff(tmp_path / "fine.tif", img, levels=3, mpp=0.5)
    coarse = write_pyramidal_tiff(tmp_path / "coarse.tif", block_mean(img, 2), levels=2, mpp=1.0)
    run = load_run(run_dir)
    a = predict_wsi(run, fine, grid="visium", slide_id="s")
    b = predict_wsi(run, coarse, grid="visium", slide_id="s")
    assert a.uns["stgraph"]["resample_factor"] == pytest.approx(2.0)
    assert b.uns["stgraph"]["resample_factor"] == pytest.approx(1.0) and b.uns["stgraph"]["level"] == 0
    common = a.obs_names.intersection(b.obs_names)
    assert len(common) >= 0.9 * min(a.n_obs, b.n_obs)
    ea, eb = a[common].obsm["X_stgraph"], b[common].obsm["X_stgraph"]
    cos = (ea * eb).sum(1) / (np.linalg.norm(ea, axis=1) * np.linalg.norm(eb, axis=1))
    assert np.median(cos) > 0.95


def test_run_without_pixel_size_refuses_wsi_unless_train_mpp(run_dir, slides, tmp_path, capsys):
    """A run whose training slides stated no pixel size would cut a whole slide at the slide's own scale:
    refused before the slide is opened, unless --train-mpp states the training pixel size."""
    import shutil

    from stgraph.inference import load_run
    from stgraph.inference.wsi import predict_wsi
    from stgraph.preprocess.resolution import UnknownResolutionError

    run = load_run(run_dir)
    run.info["resolution"] = dict(run.resolution, microns_per_pixel=None, patch_um=None, patch_mpp=None)
    with pytest.raises(UnknownResolutionError, match="--train-mpp"):
        predict_wsi(run, tmp_path / "not_even_there.tif")
    prov = predict_wsi(run, slides["a"], train_mpp=1.0).uns["stgraph"]
    assert prov["physical_resolution"] is True and prov["patch_um"] == pytest.approx(32.0)
    assert prov["target_mpp"] == pytest.approx(1.0) and prov["resample_factor"] == pytest.approx(2.0)

    nores = tmp_path / "nores"
    shutil.copytree(run_dir, nores)
    info = json.loads((nores / "run.json").read_text())
    info["resolution"].update(microns_per_pixel=None, patch_um=None, patch_mpp=None)
    (nores / "run.json").write_text(json.dumps(info))
    out = tmp_path / "p.h5ad"
    assert main(["predict", "--model", str(nores), "--wsi", str(slides["a"]), "--out", str(out)]) == 2
    assert "--train-mpp" in capsys.readouterr().err and not out.exists()
    assert main(["predict", "--model", str(nores), "--wsi", str(slides["a"]), "--out", str(out),
                 "--train-mpp", "1.0"]) == 0


def test_features_are_streamed_in_chunks(run_dir, slides, monkeypatch):
    import stgraph.data.wsi.image as wsi_mod
    from stgraph.data.wsi import WSIImage
    from stgraph.inference import load_run
    from stgraph.inference.wsi import wsi_features

    run = load_run(run_dir)
    seen = []
    real = wsi_mod.iter_patches_at_mpp

    def spy(*args, **kwargs):
        for idx, patches in real(*args, **kwargs):
            seen.append(len(patches))
            yield idx, patches

    monkeypatch.setattr(wsi_mod, "iter_patches_at_mpp", spy)
    xy = np.stack(np.meshgrid(np.arange(200, 800, 30), np.arange(200, 800, 30)), -1).reshape(-1, 2).astype(float)
    with WSIImage(slides["a"]) as wsi:
        chunked = wsi_features(run, wsi, xy, 32.0, 1.0, chunk_size=16, batch_size=8)
        whole = wsi_features(run, wsi, xy, 32.0, 1.0, chunk_size=len(xy), batch_size=len(xy))
    assert max(seen[:-1]) <= 16 and len(seen) > len(xy) // 16
    np.testing.assert_allclose(chunked, whole, rtol=1e-4, atol=1e-5)


def test_feature_cache_is_optional_and_in_the_user_cache_dir(run_dir, slides, tmp_path, monkeypatch, caplog):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("STGRAPH_CACHE_DIR", raising=False)
    base = ["predict", "--model", str(run_dir), "--wsi", str(slides["a"]), "--device", "cpu"]
    assert main(base + ["--out", "p1.h5ad"]) == 0
    assert sorted(p.name for p in work.iterdir()) == ["p1.h5ad"]  # nothing else in the working directory
    assert not (tmp_path / "xdg").exists()  # no cache unless asked
    with caplog.at_level(logging.INFO, logger="stgraph"):
        assert main(base + ["--out", "p2.h5ad", "--cache"]) == 0
    cached = list((tmp_path / "xdg" / "stgraph" / "features").glob("*.npy"))
    assert len(cached) == 1 and "MB" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="stgraph"):
        assert main(base + ["--out", "p3.h5ad", "--cache"]) == 0
    assert "from the cache" in caplog.text
    np.testing.assert_array_equal(anndata.read_h5ad(work / "p1.h5ad").X, anndata.read_h5ad(work / "p3.h5ad").X)


def test_many_slides_by_glob_and_table_exports(run_dir, slides, tmp_path, capsys):
    import pandas as pd

    out = tmp_path / "preds"
    pattern = str(slides["a"].parent / "[ab].tif")
    rc = main(["predict", "--model", str(run_dir), "--wsi", pattern, "--out", str(out), "--format", "csv",
               "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["a.csv", "b.csv", "manifest.csv"]  # a cohort's record
    table = pd.read_csv(out / "a.csv", index_col=0)
    assert list(table.columns[:4]) == ["x", "y", "array_row", "array_col"] and len(table) > 10
    # A single slide exported to one .csv file.
    rc = main(["predict", "--model", str(run_dir), "--wsi", str(slides["a"]), "--out", str(tmp_path / "a.csv"),
               "--grid", "st", "--device", "cpu"])
    assert rc == 0 and len(pd.read_csv(tmp_path / "a.csv", index_col=0)) < len(table)


def test_bad_input_fails_before_compute_with_clear_errors(run_dir, slides, tmp_path, capsys, caplog):
    base = ["predict", "--model", str(run_dir), "--device", "cpu"]

    def err(*argv):
        assert main(base + list(argv)) == 2
        return capsys.readouterr().err

    assert "--mpp" in err("--wsi", str(slides["nompp"]), "--out", str(tmp_path / "x.h5ad"))
    blank = err("--wsi", str(slides["blank"]), "--out", str(tmp_path / "x.h5ad"))
    assert "tissue" in blank.lower() and "--min-saturation" in blank and "--min-tissue-area" in blank
    # The options the advice names exist and reach tissue detection: a huge minimum area finds no tissue.
    assert "no tissue" in err("--wsi", str(slides["a"]), "--out", str(tmp_path / "x.h5ad"),
                              "--min-tissue-area", "1e12")
    assert "--min-saturation" in err("--wsi", str(slides["a"]), "--out", str(tmp_path / "x.h5ad"),
                                     "--min-saturation", "300")
    assert "grid" in err("--wsi", str(slides["a"]), "--out", str(tmp_path / "x.h5ad"), "--grid", "hexagon")
    import importlib.util

    if importlib.util.find_spec("pyarrow") is None:  # parquet export needs pyarrow (squidpy brings it)
        assert "pyarrow" in err("--wsi", str(slides["a"]), "--out", str(tmp_path / "x.parquet"))
    assert "not found" in err("--wsi", str(tmp_path / "nope.tif"), "--out", str(tmp_path / "x.h5ad"))
    assert "output folder" in err("--wsi", str(slides["a"]), str(slides["b"]), "--out", str(tmp_path / "x.h5ad"))
    existing = tmp_path / "keep.h5ad"
    existing.write_text("user data")
    assert "already exists" in err("--wsi", str(slides["a"]), "--out", str(existing))
    assert existing.read_text() == "user data"
    assert not (tmp_path / "x.h5ad").exists()
    # With --mpp the slide without a pixel size works; a pitch below the patch is a logged decision.
    with caplog.at_level(logging.WARNING, logger="stgraph"):
        assert main(base + ["--wsi", str(slides["nompp"]), "--mpp", "0.5", "--grid", "20",
                            "--out", str(tmp_path / "y.h5ad")]) == 0
    assert "smaller than the patch" in caplog.text


def test_spot_query_at_another_resolution_is_resampled(run_dir, synthetic_slides, caplog, tmp_path, capsys):
    """A slide with spots, scanned at 0.5 µm/px, against a run trained at 1 µm/px: its 64 px crops are
    resized to 32 px, so the prediction matches the same slide at 1 µm/px."""
    from stgraph.inference import load_run, predict_slide, write_prediction

    run = load_run(run_dir)
    run.config.data.cache_dir = None
    base = synthetic_slides[2].copy()
    lib = next(iter(base.uns["spatial"]))
    entry = base.uns["spatial"][lib]
    entry["metadata"] = dict(entry.get("metadata", {}), microns_per_pixel=1.0)
    fine = base.copy()
    fentry = fine.uns["spatial"][lib]
    fentry["images"] = {"fullres": np.repeat(np.repeat(entry["images"]["fullres"], 2, 0), 2, 1)}
    fentry["metadata"] = dict(entry["metadata"], microns_per_pixel=0.5)
    fine.obsm["spatial"] = base.obsm["spatial"] * 2 + 0.5
    with caplog.at_level(logging.INFO, logger="stgraph"):
        a = predict_slide(run, base)
        b = predict_slide(run, fine)
    assert "factor 2" in caplog.text
    assert b.uns["stgraph"]["resample_factor"] == pytest.approx(2.0)
    assert a.uns["stgraph"]["resample_factor"] == pytest.approx(1.0)
    ea, eb = a.obsm["X_stgraph"], b.obsm["X_stgraph"]
    cos = (ea * eb).sum(1) / (np.linalg.norm(ea, axis=1) * np.linalg.norm(eb, axis=1))
    assert np.median(cos) > 0.95
    # Without a pixel size on a query of a run that has one: refused before any feature (its patches would
    # cover another area than in training), unless allowed (the pixel behaviour, said); --mpp supplies one.
    from stgraph.preprocess.resolution import ScaleMismatchError

    del fine.uns["spatial"][lib]["metadata"]["microns_per_pixel"]
    with pytest.raises(ScaleMismatchError, match="states no pixel size while the run was trained at 1 µm/px"):
        predict_slide(run, fine)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stgraph"):
        c = predict_slide(run, fine, allow_scale_mismatch=True)
    assert "states no pixel size" in caplog.text and c.uns["stgraph"]["physical_resolution"] is False
    path = write_prediction(fine, tmp_path / "fine.h5ad")
    rc = main(["predict", "--model", str(run_dir), "--slide", str(path), "--device", "cpu",
               "--out", str(tmp_path / "p.h5ad")])
    assert rc == 2 and "--mpp" in capsys.readouterr().err
    rc = main(["predict", "--model", str(run_dir), "--slide", str(path), "--mpp", "0.5", "--device", "cpu",
               "--out", str(tmp_path / "p.h5ad")])
    assert rc == 0, capsys.readouterr().err
    assert anndata.read_h5ad(tmp_path / "p.h5ad").uns["stgraph"]["resample_factor"] == pytest.approx(2.0)


def test_default_cache_dir_is_the_user_cache_dir(tmp_path, monkeypatch):
    from stgraph.config import load_config
    from stgraph.preprocess.prepare import _cache_subdir
    from stgraph.utils import resolve_cache_dir, user_cache_dir
    from tests.conftest import CONFIGS

    monkeypatch.delenv("STGRAPH_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cfg = load_config(CONFIGS / "heclip.yaml")
    assert cfg.data.cache_dir == "auto"
    assert _cache_subdir(cfg, "patches") == str(tmp_path / "xdg" / "stgraph" / "patches")
    monkeypatch.setenv("STGRAPH_CACHE_DIR", str(tmp_path / "mine"))
    assert user_cache_dir() == tmp_path / "mine"
    assert resolve_cache_dir(None) is None and resolve_cache_dir("rel/dir") == Path("rel/dir")


def test_many_spot_slides_by_glob_and_device_options(run_dir, synthetic_slides, tmp_path, capsys):
    from cli.main import build_parser
    from stgraph.inference import write_prediction

    folder = tmp_path / "slides"
    for s in synthetic_slides[:2]:
        write_prediction(s, folder / f"{next(iter(s.uns['spatial']))}.h5ad")
    out = tmp_path / "preds"
    rc = main(["predict", "--model", str(run_dir), "--slide", str(folder / "*.h5ad"), "--out", str(out),
               "--device", "cpu", "--mpp", "1"])
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["slide0.h5ad", "slide1.h5ad"]
    assert main(["predict", "--model", str(run_dir), "--slide", str(folder / "*.h5ad"), "--out", str(out),
                 "--device", "cpu", "--mpp", "1"]) == 2
    assert "already exists" in capsys.readouterr().err
    parser = build_parser()
    assert parser.parse_args(["extend", "--model", "r", "--data", "d", "--device", "cpu"]).device == "cpu"
    assert parser.parse_args(["evaluate", "--config", "c", "--out", "o", "--device", "cuda"]).device == "cuda"


def test_fullres_image_goes_with_a_space_ranger_folder(run_dir, synthetic_slides, tmp_path, capsys, monkeypatch):
    import stgraph.data as data_mod
    from stgraph.inference import write_prediction

    path = write_prediction(synthetic_slides[2], tmp_path / "q.h5ad")
    rc = main(["predict", "--model", str(run_dir), "--slide", str(path), "--fullres-image", str(path),
               "--out", str(tmp_path / "p.h5ad"), "--device", "cpu"])
    assert rc == 2 and "Space Ranger" in capsys.readouterr().err
    # A Space Ranger folder: the image is handed to the Visium reader.
    folder = tmp_path / "sr"
    (folder / "spatial").mkdir(parents=True)
    (folder / "spatial" / "tissue_positions.csv").write_text("barcode\n")
    seen = {}

    def fake_read_slide(p, format=None, **kw):
        seen.update(path=p, format=format, **kw)
        return synthetic_slides[2].copy()  # the CLI sets --mpp on what it read: never on the shared fixture

    monkeypatch.setattr(data_mod, "read_slide", fake_read_slide)
    rc = main(["predict", "--model", str(run_dir), "--slide", str(folder), "--fullres-image", "big.tif",
               "--out", str(tmp_path / "p.h5ad"), "--device", "cpu", "--mpp", "1"])
    assert rc == 0, capsys.readouterr().err
    assert seen["format"] == "visium" and seen["fullres_image"] == "big.tif"


def test_unreadable_level_fails_before_compute(run_dir, slides, tmp_path, capsys, monkeypatch):
    from stgraph.data.errors import SlideFormatError
    from stgraph.data.wsi import backends as wsi_mod

    real = wsi_mod.TiffBackend.read

    def broken(self, level, *args):
        if level == 1:
            raise SlideFormatError(f"cannot decode level 1 of {self.path}: corrupt tile")
        return real(self, level, *args)

    monkeypatch.setattr(wsi_mod.TiffBackend, "read", broken)
    import stgraph.inference.wsi as pw

    monkeypatch.setattr(pw, "wsi_features", lambda *a, **k: pytest.fail("features computed"))
    out = tmp_path / "x.h5ad"
    rc = main(["predict", "--model", str(run_dir), "--wsi", str(slides["a"]), "--out", str(out), "--device", "cpu"])
    assert rc == 2 and "cannot decode level 1" in capsys.readouterr().err
    assert not out.exists()


def test_prefetching_reads_in_a_thread_and_predicts_exactly_as_the_plain_path(run_dir, slides, monkeypatch):
    import threading

    import stgraph.data.wsi.image as wsi_mod
    from stgraph.inference import load_run
    from stgraph.inference.wsi import predict_wsi

    run = load_run(run_dir)
    readers = []
    real = wsi_mod.iter_patches_at_mpp

    def spy(*args, **kwargs):
        for item in real(*args, **kwargs):
            readers.append(threading.current_thread().name)
            yield item

    monkeypatch.setattr(wsi_mod, "iter_patches_at_mpp", spy)
    plain = predict_wsi(run, slides["a"], grid=60, chunk_size=8, batch_size=4, prefetch_chunks=0)
    assert set(readers) == {threading.current_thread().name}
    readers.clear()
    ahead = predict_wsi(run, slides["a"], grid=60, chunk_size=8, batch_size=4, prefetch_chunks=2)
    assert set(readers) == {"stgraph-prefetch"} and len(readers) > 3
    assert plain.n_obs > 20
    np.testing.assert_array_equal(ahead.obsm["spatial"], plain.obsm["spatial"])
    np.testing.assert_array_equal(ahead.X, plain.X)


def test_prefetch_keeps_order_bounds_the_read_ahead_and_passes_errors_on():
    import threading

    from stgraph.utils import prefetch

    produced = []

    def items(n, fail_at=None):
        for i in range(n):
            if i == fail_at:
                raise OSError(f"tile {i} is damaged")
            produced.append(i)
            yield i

    consumed = []
    for i in prefetch(items(20), depth=2):
        consumed.append(i)
        # one queued + one waiting to be queued + the one in hand at most
        deadline = __import__("time").monotonic() + 0.05
        while __import__("time").monotonic() < deadline:
            pass
        assert len(produced) <= len(consumed) + 3
    assert consumed == list(range(20))
    assert list(prefetch(items(5), depth=0)) == list(range(5))
    with pytest.raises(OSError, match="tile 3 is damaged"):
        list(prefetch(items(10, fail_at=3), depth=1))
    before = threading.active_count()
    produced.clear()
    for i in prefetch(items(1000), depth=1):
        if i == 2:
            break
    assert threading.active_count() == before and len(produced) <= 6  # stopped, not run to the end


def _check_spatial_plots(pred, library_id):
    """sc.pl.spatial and sq.pl.spatial_scatter draw the hires image and one marker per spot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    gene = pred.var_names[0]
    images = pred.uns["spatial"][library_id]["images"]
    img_key = "hires" if "hires" in images else next(iter(images))  # a spot table keeps its input's images

    def n_markers(ax):  # circles as one PatchCollection (scanpy) or one offset each (scatter)
        return sum(max(len(c.get_paths()), len(c.get_offsets())) for c in ax.collections)

    try:
        ax = sc.pl.spatial(pred, img_key=img_key, color=gene, library_id=library_id, show=False)[0]
        assert len(ax.images) == 1
        assert n_markers(ax) == pred.n_obs
        plt.close("all")
        sq = pytest.importorskip("squidpy")
        sq.pl.spatial_scatter(pred, color=gene, library_id=library_id, img_res_key=img_key)
        ax = plt.gcf().axes[0]
        assert len(ax.images) == 1
        assert n_markers(ax) >= pred.n_obs
    finally:
        plt.close("all")


def test_wsi_and_spot_table_predictions_plot_with_scanpy_and_squidpy(run_dir, slides, synthetic_slides):
    from stgraph.inference import load_run, predict_slide
    from stgraph.inference.wsi import predict_wsi

    run = load_run(run_dir)
    wsi_pred = predict_wsi(run, slides["a"], grid="visium")
    assert wsi_pred.n_obs > 10
    library_id = next(iter(wsi_pred.uns["spatial"]))
    assert "hires" in wsi_pred.uns["spatial"][library_id]["images"]
    _check_spatial_plots(wsi_pred, library_id)
    spot_pred = predict_slide(run, synthetic_slides[2])
    assert "spatial" in spot_pred.uns and "spatial" in spot_pred.obsm
    _check_spatial_plots(spot_pred, next(iter(spot_pred.uns["spatial"])))
