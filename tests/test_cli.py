"""The command line end to end on small synthetic slides."""
import subprocess
import sys
from pathlib import Path

import anndata
import pytest

from cli.main import main
from tests.conftest import CONFIGS, tiny_overrides


def test_train_predict_plot(tmp_path, slide_files, capsys):
    run = tmp_path / "run"
    overrides = tiny_overrides(tmp_path / "cache", epochs=2) + ["data.harmony=false"]
    assert main(["train", "--config", str(CONFIGS / "stgchb.yaml"), "--data", *slide_files[:2],
                 "--out", str(run), *overrides]) == 0
    pred_path = tmp_path / "pred.h5ad"
    assert main(["predict", "--model", str(run), "--slide", slide_files[2], "--out", str(pred_path),
                 "--plot", "gene_0", "gene_1"]) == 0
    pred = anndata.read_h5ad(pred_path)
    assert pred.n_obs == 100 and "spatial" in pred.obsm and pred.uns["stgraph"]["method"] == "stgchb"
    assert pred_path.with_suffix(".png").stat().st_size > 1000

    # no silent overwrite
    assert main(["predict", "--model", str(run), "--slide", slide_files[2], "--out", str(pred_path)]) != 0
    assert "already exists" in capsys.readouterr().err

    png = tmp_path / "maps.png"
    assert main(["plot", "--pred", str(pred_path), "--true", slide_files[2], "--genes", "gene_3",
                 "--out", str(png)]) == 0
    assert png.stat().st_size > 1000


def test_plot_true_is_a_switch_reading_the_recorded_or_given_slide(tmp_path, slide_files, capsys):
    """`plot --true` reads the truth from the slide the prediction records, or from predict's own slide
    arguments; a prediction without a recorded source asks for them."""
    run = tmp_path / "run"
    overrides = tiny_overrides(tmp_path / "cache", epochs=1) + ["data.harmony=false"]
    assert main(["train", "--config", str(CONFIGS / "bleep.yaml"), "--data", *slide_files[:2],
                 "--out", str(run), *overrides]) == 0
    pred_path = tmp_path / "pred.h5ad"
    assert main(["predict", "--model", str(run), "--slide", slide_files[2], "--out", str(pred_path)]) == 0
    pred = anndata.read_h5ad(pred_path)
    assert pred.uns["stgraph"]["source_slide"]["slide"] == str(Path(slide_files[2]).resolve())
    recorded = tmp_path / "recorded.png"
    assert main(["plot", "--pred", str(pred_path), "--true", "--genes", "gene_3", "--out", str(recorded)]) == 0
    given = tmp_path / "given.png"
    assert main(["plot", "--pred", str(pred_path), "--true", "--slide", slide_files[2], "--genes", "gene_3",
                 "--out", str(given)]) == 0
    assert recorded.stat().st_size > 1000 and given.stat().st_size > 1000

    del pred.uns["stgraph"]["source_slide"]
    bare = tmp_path / "bare.h5ad"
    pred.write_h5ad(bare)
    capsys.readouterr()
    assert main(["plot", "--pred", str(bare), "--true", "--genes", "gene_3", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "--slide PATH" in err and "--her2st ROOT --section ID" in err and not (tmp_path / "x.png").exists()


def test_bad_override_and_missing_model(tmp_path, slide_files, capsys):
    assert main(["train", "--config", str(CONFIGS / "bleep.yaml"), "--data", slide_files[0],
                 "--out", str(tmp_path / "r"), "train.epochz=3"]) == 2
    assert "epochz" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path / "none"), "--slide", slide_files[0],
                 "--out", str(tmp_path / "p.h5ad")]) == 2


def test_console_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "cli.main", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "train" in out.stdout and "predict" in out.stdout


def test_output_names_keep_the_whole_folder_name(tmp_path):
    """Space Ranger versions 1.0.0 and 1.5.0 as folders must not both become `1.h5ad`."""
    import argparse

    from cli.predict import _outputs, _slide_name

    a, b = tmp_path / "1.0.0", tmp_path / "1.5.0"
    a.mkdir()
    b.mkdir()
    (tmp_path / "s1" / "outs").mkdir(parents=True)
    assert _slide_name(a) == "1.0.0" and _slide_name(tmp_path / "s1" / "outs") == "s1"
    assert _slide_name(tmp_path / "x.ome.tif") == "x" and _slide_name(tmp_path / "C6.h5ad") == "C6"
    args = argparse.Namespace(out=str(tmp_path / "preds"), format="h5ad", force=False)
    assert [p.name for _, p in _outputs([a, b], args)] == ["1.0.0.h5ad", "1.5.0.h5ad"]
