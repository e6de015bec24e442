"""Issue 12: bad input never loses what the user had, and fails with a clear error before any compute."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from stgraph.training import train_model


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def finished_run(tiny_config, synthetic_slides, tmp_path):
    out = tmp_path / "runs" / "base"
    train_model(tiny_config("bleep.yaml", "train.epochs=1", "data.harmony=false"), synthetic_slides[:2], out=out)
    return out


# ---------------------------------------------------------------- 1. --force builds beside, swaps when complete
def test_force_with_missing_gene_file_keeps_the_old_run(tiny_config, synthetic_slides, finished_run):
    before = _snapshot(finished_run)
    cfg = tiny_config("bleep.yaml", "train.epochs=1", f"data.genes={finished_run.parent / 'typo.npy'}")
    with pytest.raises(FileNotFoundError, match="typo.npy"):
        train_model(cfg, synthetic_slides[:2], out=finished_run, force=True)
    assert _snapshot(finished_run) == before
    assert sorted(p.name for p in finished_run.parent.iterdir()) == ["base"]


def test_force_interrupted_keeps_the_old_run(tiny_config, synthetic_slides, finished_run, monkeypatch):
    from stgraph.training import trainer

    def killed(self, resume=False):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.Trainer, "fit", killed)
    before = _snapshot(finished_run)
    with pytest.raises(KeyboardInterrupt):
        train_model(tiny_config("bleep.yaml", "train.epochs=1", "data.harmony=false"), synthetic_slides[:2],
                    out=finished_run, force=True)
    assert _snapshot(finished_run) == before
    assert sorted(p.name for p in finished_run.parent.iterdir()) == ["base"]


def test_force_replaces_the_run_once_complete(tiny_config, synthetic_slides, finished_run):
    from stgraph.inference import load_run

    run = train_model(tiny_config("bleep.yaml", "train.epochs=2", "data.harmony=false"), synthetic_slides[:2],
                      out=finished_run, force=True)
    assert run.run_dir == finished_run
    assert load_run(finished_run).config.train.epochs == 2
    assert sorted(p.name for p in finished_run.parent.iterdir()) == ["base"]


# ---------------------------------------------------------------- 2. --resume checks config and data
def test_resume_with_other_config_is_refused_touching_nothing(tiny_config, synthetic_slides, finished_run):
    from stgraph.training.job import ResumeMismatchError

    before = _snapshot(finished_run)
    with pytest.raises(ResumeMismatchError, match="n_top_hvg"):
        train_model(tiny_config("bleep.yaml", "train.epochs=2", "data.harmony=false", "data.n_top_hvg=10"),
                    synthetic_slides[:2], out=finished_run, resume=True)
    assert _snapshot(finished_run) == before


def test_resume_with_other_sections_is_refused(tiny_config, synthetic_slides, finished_run):
    from stgraph.training.job import ResumeMismatchError

    before = _snapshot(finished_run)
    with pytest.raises(ResumeMismatchError, match="slide2"):
        train_model(tiny_config("bleep.yaml", "train.epochs=2", "data.harmony=false"),
                    [synthetic_slides[0], synthetic_slides[2]], out=finished_run, resume=True)
    assert _snapshot(finished_run) == before


def test_resume_with_other_genes_is_refused(tiny_config, synthetic_slides, finished_run):
    from stgraph.training.job import ResumeMismatchError

    fewer = [ad[:, ad.var_names[:30]].copy() for ad in synthetic_slides[:2]]
    before = _snapshot(finished_run)
    with pytest.raises(ResumeMismatchError, match="genes"):
        train_model(tiny_config("bleep.yaml", "train.epochs=2", "data.harmony=false"), fewer,
                    out=finished_run, resume=True)
    assert _snapshot(finished_run) == before


# ---------------------------------------------------------------- 6. destination checked first
def test_run_folder_that_is_a_file_is_refused(tiny_config, synthetic_slides, tmp_path):
    out = tmp_path / "run"
    out.write_text("not a folder")
    with pytest.raises(FileExistsError, match="not a folder"):
        train_model(tiny_config("bleep.yaml", "train.epochs=1"), synthetic_slides[:2], out=out)


def test_unwritable_cache_dir_is_refused_before_compute(tiny_config, synthetic_slides, tmp_path):
    from stgraph.utils import DestinationError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    cfg = tiny_config("bleep.yaml", "train.epochs=1", f"data.cache_dir={blocker / 'cache'}")
    with pytest.raises(DestinationError, match="cache"):
        train_model(cfg, synthetic_slides[:2], out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_parent_is_refused(tmp_path):
    from stgraph.utils import DestinationError, check_writable_dir

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(DestinationError, match="not writable"):
            check_writable_dir(ro / "run")
    finally:
        ro.chmod(0o755)


def test_output_file_checks(tmp_path):
    from stgraph.utils import DestinationError, check_output_file

    (tmp_path / "dir.h5ad").mkdir()
    with pytest.raises(DestinationError, match="folder"):
        check_output_file(tmp_path / "dir.h5ad", (".h5ad",))
    with pytest.raises(DestinationError, match=".h5ad"):
        check_output_file(tmp_path / "pred.csv", (".h5ad",))
    (tmp_path / "x.h5ad").write_text("")
    with pytest.raises(FileExistsError):
        check_output_file(tmp_path / "x.h5ad", (".h5ad",))
    # --force replaces only what stgraph wrote: the user's file (here an empty one) is refused, named
    with pytest.raises(DestinationError, match="x.h5ad exists and is not an output stgraph wrote"):
        check_output_file(tmp_path / "x.h5ad", (".h5ad",), force=True)
    import anndata
    import numpy as np

    earlier = anndata.AnnData(np.zeros((2, 2), np.float32))
    earlier.uns["stgraph"] = {"model": "run"}
    earlier.write_h5ad(tmp_path / "earlier.h5ad")
    check_output_file(tmp_path / "earlier.h5ad", (".h5ad",), force=True)


# ---------------------------------------------------------------- 7. a failed first train does not block the retry
def test_failed_first_train_does_not_block_the_retry(tiny_config, synthetic_slides, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("name: leftover\n")  # what a failed start used to leave
    run = train_model(tiny_config("bleep.yaml", "train.epochs=1"), synthetic_slides[:2], out=out)
    assert (out / "run.json").is_file() and run.run_dir == out


def test_existing_complete_run_error_does_not_suggest_resume(finished_run, tiny_config, synthetic_slides):
    with pytest.raises(FileExistsError) as info:
        train_model(tiny_config("bleep.yaml", "train.epochs=1"), synthetic_slides[:2], out=finished_run)
    assert "--resume" not in str(info.value)


# ---------------------------------------------------------------- 9. atomic writes
def test_atomic_write_respects_umask(tmp_path):
    from stgraph.utils import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644


def test_atomic_write_cleans_up_on_failure(tmp_path):
    from stgraph.utils import atomic_path

    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- 6/7. predict: destination and genes first
@pytest.fixture
def query_file(synthetic_slides, tmp_path):
    p = tmp_path / "query.h5ad"
    synthetic_slides[2].write_h5ad(p)
    return str(p)


# A .csv/.parquet --out is an export and a suffix-less --out a folder of per-slide files (see test_predict_wsi).
@pytest.mark.parametrize("name", ["pred.txt", "folder.h5ad"])
def test_predict_refuses_a_bad_destination_before_compute(finished_run, query_file, tmp_path, capsys, name):
    from cli.main import main

    out = tmp_path / name
    if name == "folder.h5ad":
        out.mkdir()
    assert main(["predict", "--model", str(finished_run), "--slide", query_file, "--out", str(out)]) == 2
    assert str(out) in capsys.readouterr().err


def test_predict_plot_with_unknown_gene_writes_nothing(finished_run, query_file, tmp_path, capsys):
    from cli.main import main

    out = tmp_path / "pred.h5ad"
    assert main(["predict", "--model", str(finished_run), "--slide", query_file, "--out", str(out),
                 "--plot", "gene_0", "NOTAGENE"]) == 2
    assert "NOTAGENE" in capsys.readouterr().err
    assert not out.exists() and not out.with_suffix(".png").exists()


# ---------------------------------------------------------------- 10. overrides after --sections
def test_overrides_after_sections_are_not_section_names():
    from cli.main import parse_args

    args = parse_args(["train", "--config", "c.yaml", "--her2st", "root", "--out", "r",
                       "--sections", "B4", "C2", "train.epochs=60", "data.harmony=false"])
    assert args.sections == ["B4", "C2"]
    assert args.overrides == ["train.epochs=60", "data.harmony=false"]
    args = parse_args(["evaluate", "--config", "a.yaml", "--her2st", "root", "--out", "r",
                       "--only-folds", "B4", "train.epochs=1"])
    assert args.only_folds == ["B4"] and args.overrides == ["train.epochs=1"]


# ---------------------------------------------------------------- 3. duplicate gene names, 8. space-separated counts
def _legacy(tmp_path, header: str, rows: list[str]):
    import gzip

    import pandas as pd
    from PIL import Image

    counts = tmp_path / "S1.tsv.gz"
    with gzip.open(counts, "wt") as fh:
        fh.write("\n".join([header, *rows]) + "\n")
    sel = tmp_path / "S1_selection.tsv"
    pd.DataFrame({"x": [1, 2], "y": [1, 1], "pixel_x": [50.0, 100.0], "pixel_y": [40.0, 40.0],
                  "selected": [1, 1]}).to_csv(sel, sep="\t", index=False)
    img = tmp_path / "S1.png"
    Image.new("RGB", (200, 150), (240, 200, 220)).save(img)
    return counts, sel, img


def test_duplicate_gene_names_are_reported(tmp_path):
    from stgraph.data.errors import SlideFormatError
    from stgraph.data.readers import read_st_legacy

    paths = _legacy(tmp_path, "\tPLEKHN1\tGB\tPLEKHN1", ["1x1\t1\t2\t3", "2x1\t0\t1\t0"])
    with pytest.raises(SlideFormatError, match=r"duplicate gene names: \['PLEKHN1'\]"):
        read_st_legacy(*paths)


def test_space_separated_counts_are_named(tmp_path):
    from stgraph.data.errors import SlideFormatError
    from stgraph.data.readers import read_st_legacy

    paths = _legacy(tmp_path, " GA GB", ["1x1 1 2", "2x1 0 1"])
    with pytest.raises(SlideFormatError, match="S1.tsv.gz.*tab-separated"):
        read_st_legacy(*paths)


# ---------------------------------------------------------------- 4. extend with too few shared genes
def test_extend_refuses_a_slide_sharing_too_few_genes(finished_run, synthetic_slides):
    from stgraph.data.slide_id import set_slide_id
    from stgraph.inference import GeneOverlapError, extend_reference, load_run

    loaded = load_run(finished_run)
    other = synthetic_slides[2].copy()
    other.var_names = [f"other_{g}" for g in other.var_names]
    set_slide_id(other, "slide9")
    before = _snapshot(finished_run)
    with pytest.raises(GeneOverlapError, match=f"0 of the run's {len(loaded.genes)} genes.*{loaded.genes[0]}"):
        extend_reference(loaded, [other])
    assert _snapshot(finished_run) == before


# ---------------------------------------------------------------- 5. ranges checked at load time
@pytest.mark.parametrize("override, message", [
    ("train.epochs=0", "train.epochs must be ≥ 1"),
    ("train.epochs=-1", "train.epochs must be ≥ 1"),
    ("train.batch_size=0", "train.batch_size must be ≥ 2"),
    ("train.batch_size=1", "model.kind=contrastive needs at least 2 spots per batch"),
    ("train.lr=0", "train.lr must be > 0"),
    ("inference.k=0", "inference.k must be ≥ 1"),
    ("loss.temperature=-1", "loss.temperature must be > 0"),
    ("train.val_fraction=1.5", "val_fraction"),
    ("model.kind=rigde", r"model.kind: 'rigde' is not one of \['contrastive', 'ridge'"),
    ("model.name=''", "non-empty"),
])
def test_config_ranges_fail_at_load_time(override, message):
    from stgraph.config import ConfigError, load_config
    from tests.conftest import CONFIGS

    with pytest.raises(ConfigError, match=message):
        load_config(CONFIGS / "bleep.yaml", [override])


def test_every_shipped_config_still_loads():
    from stgraph.config import load_config
    from tests.conftest import CONFIGS

    names = {load_config(p).model.name for p in CONFIGS.rglob("*.yaml")}
    assert {"bleep", "ridge"} <= names


# ---------------------------------------------------------------- 8. suspicious counts and images, named
def test_log_transformed_counts_warn_naming_the_file(tmp_path):
    from stgraph.data.readers import read_st_legacy

    paths = _legacy(tmp_path, "\tGA\tGB", ["1x1\t0.693\t1.386", "2x1\t0\t2.197"])
    with pytest.warns(UserWarning, match="S1.tsv.gz.*non-integer.*log"):
        read_st_legacy(*paths)


def test_log_transformed_h5ad_warns(tmp_path, synthetic_slides):
    import numpy as np

    from stgraph.data import read_slide

    ad = synthetic_slides[0].copy()
    ad.X = ad.X.copy()
    ad.X.data = np.log1p(ad.X.data)
    path = tmp_path / "logged.h5ad"
    ad.write_h5ad(path)
    with pytest.warns(UserWarning, match="logged.h5ad.*non-integer"):
        read_slide(path)


def test_constant_image_warns_naming_the_file(tmp_path):
    from stgraph.data.readers import read_st_legacy

    from stgraph.data.patches import extract_patches

    paths = _legacy(tmp_path, "\tGA\tGB", ["1x1\t1\t2", "2x1\t0\t1"])  # the image is one flat colour
    with pytest.warns(UserWarning, match="S1.png is blank"):
        extract_patches(read_st_legacy(*paths), size=16)


def _smooth_jpeg() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:150, 0:200]
    a = np.stack([128 + 100 * np.sin(xx / 9), 128 + 100 * np.cos(yy / 7), 128 + 50 * np.sin((xx + yy) / 11)], -1)
    buf = io.BytesIO()
    Image.fromarray(a.astype(np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_jpeg_with_garbage_inside_is_refused(tmp_path):
    """Find garbage that Pillow decodes without a word, then check that stgraph refuses the file by name."""
    import io

    import numpy as np
    from PIL import Image

    from stgraph.data.errors import SlideFormatError
    from stgraph.data.readers import read_st_legacy

    good = _smooth_jpeg()
    paths = _legacy(tmp_path, "\tGA\tGB", ["1x1\t1\t2", "2x1\t0\t1"])
    ok = tmp_path / "ok.jpg"
    ok.write_bytes(good)
    read_st_legacy(paths[0], paths[1], ok)  # an intact JPEG reads
    for seed in range(200):
        rng = np.random.default_rng(seed)
        bad = bytearray(good)
        start = len(bad) // 3
        bad[start:start + 2000] = rng.integers(0, 256, 2000, dtype=np.uint8).tobytes()
        try:
            Image.open(io.BytesIO(bytes(bad))).load()
        except Exception:
            continue
        break
    else:
        pytest.skip("no silently decoded corruption found")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(bytes(bad))
    with pytest.raises(SlideFormatError, match="broken.jpg.*corrupt JPEG"):
        read_st_legacy(paths[0], paths[1], broken)


# ---------------------------------------------------------------- first-use polish
def test_cli_version_and_verbose_after_the_subcommand(capsys):
    from cli.main import parse_args

    from stgraph import __version__

    with pytest.raises(SystemExit) as info:
        parse_args(["--version"])
    assert info.value.code == 0 and __version__ in capsys.readouterr().out
    assert parse_args(["plot", "--pred", "p.h5ad", "--genes", "A", "--out", "o.png", "-v"]).verbose is True
    assert parse_args(["-v", "plot", "--pred", "p.h5ad", "--genes", "A", "--out", "o.png"]).verbose is True
    assert parse_args(["plot", "--pred", "p.h5ad", "--genes", "A", "--out", "o.png"]).verbose is False


def test_cli_prints_no_torch_jit_warning():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import cli.main, stgraph.training, stgraph.inference"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "jit.script" not in out.stderr


def test_help_lists_every_command():
    from cli.main import COMMANDS, build_parser

    text = build_parser().format_help()
    assert all(name in text.split("\n\n")[1] for name in COMMANDS)


def test_incomplete_run_without_checkpoint_does_not_suggest_resume(tmp_path):
    from stgraph.inference import ModelFolderError, load_run

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("name: x\n")
    with pytest.raises(ModelFolderError) as info:
        load_run(tmp_path / "run")
    assert "--resume" not in str(info.value)


def test_cli_train_checks_the_gene_file_before_reading_slides(finished_run, tmp_path, capsys):
    from cli.main import main
    from tests.conftest import CONFIGS, tiny_overrides

    before = _snapshot(finished_run)
    code = main(["train", "--config", str(CONFIGS / "bleep.yaml"), "--data", str(tmp_path / "absent.h5ad"),
                 "--out", str(finished_run), "--force", *tiny_overrides(tmp_path / "cache"),
                 f"data.genes={tmp_path / 'typo.npy'}"])
    assert code == 2 and "typo.npy" in capsys.readouterr().err  # not the missing slide: checked first
    assert _snapshot(finished_run) == before


def test_a_swap_killed_halfway_is_recovered(tiny_config, synthetic_slides, finished_run):
    before = _snapshot(finished_run)
    finished_run.rename(finished_run.parent / ".base.old-abc123")  # killed between the two renames
    with pytest.raises(FileExistsError, match="already exists"):
        train_model(tiny_config("bleep.yaml", "train.epochs=1"), synthetic_slides[:2], out=finished_run)
    assert _snapshot(finished_run) == before


def test_cli_turns_sigterm_into_cleanup(tmp_path):
    """`kill` during `train --force`: the half-built sibling is removed and the old run kept (cleanup runs)."""
    import signal
    import subprocess
    import sys

    code = (
        "import os, signal, sys\n"
        "from cli.main import _exit_on_sigterm\n"
        "from stgraph.utils import atomic_path\n"
        "_exit_on_sigterm()\n"
        f"with atomic_path({str(tmp_path / 'out.txt')!r}) as tmp:\n"
        "    tmp.write_text('half')\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 128 + signal.SIGTERM, out.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_device_the_machine_lacks_is_a_clear_error_before_any_slide_is_read(tmp_path, monkeypatch):
    import torch

    from stgraph.cli.main import main
    from stgraph.utils import DeviceError, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("gpu0")
    assert resolve_device("auto").type == "cpu"
    missing = tmp_path / "no_such_slide.h5ad"  # never read: the device check comes first
    from conftest import CONFIGS

    code = main(["train", "--config", str(CONFIGS / "cpu/bleep.yaml"), "--data", str(missing),
                 "--out", str(tmp_path / "run"), "train.device=cuda"])
    assert code == 2 and not (tmp_path / "run").exists()


# ================================================================ issue 20: configs and data that were silently wrong
@pytest.mark.parametrize("files, start", [
    ({"self.yaml": "base: self.yaml\n"}, "self.yaml"),
    ({"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\ntrain: {epochs: 1}\n"}, "a.yaml"),
])
def test_a_base_cycle_is_a_config_error(tmp_path, files, start):
    from stgraph.config import ConfigError, load_config

    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / start)


def test_binary_and_empty_configs_are_refused_by_name(tmp_path):
    from stgraph.config import ConfigError, load_config

    binary = tmp_path / "weights.yaml"
    binary.write_bytes(bytes(range(128, 256)) * 4)
    with pytest.raises(ConfigError, match="weights.yaml.*UTF-8"):
        load_config(binary)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match="empty.yaml.*empty"):
        load_config(empty)


def test_list_items_are_validated():
    from stgraph.config import ConfigError, load_config

    from conftest import CONFIGS

    with pytest.raises(ConfigError, match=r"model.hsic.branches.*imgae"):
        load_config(CONFIGS / "bleep.yaml", ["model.hsic.branches=[imgae]"])
    assert load_config(CONFIGS / "bleep.yaml", ["model.hsic.branches=[image]"]).model.hsic.branches == ["image"]


@pytest.mark.parametrize("listed", [["NOPE1", "NOPE2", "NOPE3", "gene0"], ["1", "2", "3"]])
def test_a_gene_list_the_slides_mostly_lack_is_refused(tiny_config, synthetic_slides, tmp_path, listed):
    from stgraph.data.errors import SlideFormatError

    genes = tmp_path / "genes.txt"
    genes.write_text("\n".join(listed) + "\n")
    with pytest.raises(SlideFormatError, match=rf"measures only .* of its {len(listed)} genes.*'{listed[0]}'"):
        train_model(tiny_config("bleep.yaml", "train.epochs=1", f"data.genes={genes}"), synthetic_slides[:2],
                    out=tmp_path / "run")
    assert not (tmp_path / "run" / "model.pt").exists()


def test_negative_counts_name_the_file_and_a_gene(tmp_path, synthetic_slides):
    import scipy.sparse as sp

    from stgraph.data import read_slide
    from stgraph.data.errors import SlideFormatError

    ad = synthetic_slides[0].copy()
    x = ad.X.toarray() if sp.issparse(ad.X) else np.asarray(ad.X).copy()
    x[3, 5] = -2
    ad.X = sp.csr_matrix(x)
    path = tmp_path / "neg.h5ad"
    ad.write_h5ad(path)
    with pytest.raises(SlideFormatError, match=rf"neg.h5ad.*negative.*{ad.var_names[5]}"):
        read_slide(path)
    paths = _legacy(tmp_path, "\tGA\tGB", ["1x1\t1\t-2", "2x1\t0\t1"])
    from stgraph.data.readers import read_st_legacy

    with pytest.raises(SlideFormatError, match=r"S1.tsv.gz.*negative.*GB"):
        read_st_legacy(*paths)


# ------------------------------------------------------------------ issue 29: inputs that are probably wrong
@pytest.fixture
def physical_run(tiny_config, synthetic_slides, tmp_path):
    """A run trained on slides that state 1 µm/px (so it records a physical resolution and spot spacing)."""
    slides = [s.copy() for s in synthetic_slides[:2]]
    for s in slides:
        for entry in s.uns["spatial"].values():
            entry["metadata"] = dict(entry.get("metadata", {}), microns_per_pixel=1.0)
    out = tmp_path / "runs" / "physical"
    train_model(tiny_config("stgraph.yaml", "model.ridge.alpha_grid=[]", "model.ridge.gene_rank_grid=[]"), slides,
                out=out)
    return out


def test_a_query_without_a_pixel_size_or_at_a_wrong_one_is_refused_before_compute(physical_run, synthetic_slides,
                                                                                 tmp_path, capsys):
    from cli.main import main

    query = synthetic_slides[2].copy()
    query.write_h5ad(tmp_path / "q.h5ad")
    args = ["predict", "--model", str(physical_run), "--slide", str(tmp_path / "q.h5ad")]
    assert main([*args, "--out", str(tmp_path / "a.h5ad")]) == 2
    assert "states no pixel size while the run was trained at 1 µm/px" in capsys.readouterr().err
    assert main([*args, "--mpp", "10", "--out", str(tmp_path / "b.h5ad")]) == 2  # spots 10x farther apart
    err = capsys.readouterr().err
    assert "spots are 320 µm apart" in err and "training slides' 32–32 µm" in err
    assert not (tmp_path / "a.h5ad").exists() and not (tmp_path / "b.h5ad").exists()
    assert main([*args, "--mpp", "10", "--allow-scale-mismatch", "--out", str(tmp_path / "c.h5ad")]) == 0
    assert main([*args, "--mpp", "1", "--out", str(tmp_path / "d.h5ad")]) == 0


def test_a_whole_slide_whose_pixel_size_makes_it_larger_than_a_glass_slide_is_refused(physical_run, tmp_path,
                                                                                     capsys):
    """A TIFF whose metadata says 10x its real pixel size: its tissue would span over 60 mm (27,833 spots of
    meaningless work in the report); refused before any feature, allowed with the flag."""
    from cli.main import main
    from stgraph.data.wsi_synthetic import pink_texture, write_pyramidal_tiff

    rng = np.random.default_rng(0)
    img = np.full((1024, 1024, 3), 248, np.uint8)
    img[50:974, 50:974] = pink_texture((924, 924), rng)
    wsi = write_pyramidal_tiff(tmp_path / "s.tif", img, levels=2, mpp=70.0)  # 924 px × 70 µm ≈ 65 mm of tissue
    code = main(["predict", "--model", str(physical_run), "--wsi", str(wsi), "--grid", "2000",
                 "--out", str(tmp_path / "w.h5ad")])
    err = capsys.readouterr().err
    assert code == 2 and "longer than tissue on a 75 × 25 mm glass slide" in err and err.count("\n") == 1, err


def test_spots_outside_the_image_are_refused_on_every_path(synthetic_slides, tmp_path):
    from stgraph.data import read_slide
    from stgraph.data.errors import SlideFormatError
    from stgraph.preprocess.prepare import prepare_slide
    from tests.conftest import CONFIGS, tiny_overrides
    from stgraph.config import load_config

    moved = synthetic_slides[0].copy()
    moved.obsm["spatial"] = moved.obsm["spatial"] + 10_000  # all spots off the image
    moved.write_h5ad(tmp_path / "moved.h5ad")
    with pytest.raises(SlideFormatError, match="all spot centres lie outside its image"):
        read_slide(tmp_path / "moved.h5ad")
    cfg = load_config(CONFIGS / "bleep.yaml", tiny_overrides(tmp_path / "cache"))
    with pytest.raises(SlideFormatError, match="spot centres lie outside"):  # an AnnData given to the API
        prepare_slide(moved, cfg)


def test_a_greyscale_image_is_named_in_a_warning(tmp_path):
    from PIL import Image

    from stgraph.data.image import GreyscaleImageWarning, load_image_file

    Image.fromarray(np.full((32, 32), 128, np.uint8)).save(tmp_path / "grey.png")
    with pytest.warns(GreyscaleImageWarning, match="grey.png is greyscale"):
        load_image_file(tmp_path / "grey.png")


def test_evaluate_refuses_two_configs_of_one_name(tmp_path, capsys):
    from cli.main import main
    from tests.conftest import CONFIGS

    copy = tmp_path / "stgraph_lr.yaml"
    copy.write_text(f"base: {CONFIGS / 'stgraph.yaml'}\nmodel:\n  ridge:\n    alpha: 5.0\n")
    assert main(["evaluate", "--config", str(CONFIGS / "stgraph.yaml"), str(copy), "--data", str(tmp_path),
                 "--out", str(tmp_path / "eval")]) == 2
    assert "are both named 'stgraph'" in capsys.readouterr().err


def test_a_sheets_sample_id_names_its_slide(synthetic_slides, tmp_path):
    import argparse

    from cli.common import read_many

    synthetic_slides[0].write_h5ad(tmp_path / "x.h5ad")
    (tmp_path / "sheet.csv").write_text("sample_id,path\npatient7_A,x.h5ad\n")
    args = argparse.Namespace(data=[], samples=str(tmp_path / "sheet.csv"), counts=[], spots=[], image=[], her2st=None,
                              sections=None)
    (slide,) = read_many(args)
    assert set(slide.obs["slide_id"]) == {"patient7_A"} and list(slide.uns["spatial"]) == ["patient7_A"]


def test_a_plugin_that_exits_at_import_is_an_error_naming_it(tmp_path, monkeypatch, capsys):
    from cli.main import main

    (tmp_path / "exiting_plugin.py").write_text("import sys\nsys.exit(0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["--plugin", "exiting_plugin", "configs"]) == 2
    err = capsys.readouterr().err
    assert "plugin 'exiting_plugin'" in err and "sys.exit(0)" in err


@pytest.mark.parametrize("where", ["data:\n  include_genes: *g\n",
                                   "model:\n  spot_encoder:\n    name: mlp\n    options:\n      hidden_dims: *g\n"])
def test_a_yaml_alias_bomb_is_one_line_in_well_under_a_second(tmp_path, where):
    import time

    from stgraph.config import ConfigError, load_config
    from tests.conftest import CONFIGS

    levels = "".join(f"_{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefg", "bcdefgh"))
    (tmp_path / "bomb.yaml").write_text(f"base: {CONFIGS / 'bleep.yaml'}\n_a: &a [x, x, x, x, x, x, x, x, x]\n"
                                        + levels + where.replace("*g", "*h"))
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to over 200,000 values"):
        load_config(tmp_path / "bomb.yaml")
    assert time.perf_counter() - start < 1.0


def test_deep_nesting_and_a_huge_file_are_refused(tmp_path):
    from stgraph.config import ConfigError, load_config

    (tmp_path / "deep.yaml").write_text("name: " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError, match="nested deeper than 64 levels"):
        load_config(tmp_path / "deep.yaml")
    (tmp_path / "big.yaml").write_text("name: x\n" + "# padding\n" * 200_000)
    with pytest.raises(ConfigError, match="characters of YAML, over"):
        load_config(tmp_path / "big.yaml")
    with pytest.raises(ConfigError, match="nested deeper"):
        load_config(None, ["data.include_genes=" + "[" * 500 + "]" * 500])


def test_an_option_of_the_wrong_type_is_refused_at_load(tmp_path):
    from stgraph.config import ConfigError, load_config
    from tests.conftest import CONFIGS

    with pytest.raises(ConfigError, match=r"model.spot_encoder.options.heads: spot encoder 'transformer' takes int, "
                                          r"got 2.5"):
        load_config(CONFIGS / "mclstexp.yaml", ["model.spot_encoder.options.heads=2.5"])


def test_an_all_zero_training_slide_is_refused_naming_it(tiny_config, synthetic_slides, tmp_path):
    import scipy.sparse as sp

    from stgraph.data import read_slide
    from stgraph.data.errors import SlideFormatError

    zero = synthetic_slides[1].copy()
    zero.X = sp.csr_matrix(zero.shape, dtype=np.float32)
    with pytest.raises(SlideFormatError, match="training slide 'slide1' has no expression"):
        train_model(tiny_config("bleep.yaml"), [synthetic_slides[0], zero], out=tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before the run folder was made
    zero.write_h5ad(tmp_path / "zero.h5ad")
    with pytest.raises(SlideFormatError, match="every count is 0"):
        read_slide(tmp_path / "zero.h5ad")


def _tmpfs(path: Path, size: str):
    import subprocess

    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip() or 'not permitted'})")


def test_a_full_disk_is_one_line_before_or_while_writing(finished_run, synthetic_slides, tmp_path, capsys):
    import subprocess

    from cli.main import main
    from stgraph.utils.io import DiskFullError, check_free_space

    small = tmp_path / "small"
    _tmpfs(small, "1m")
    try:
        with pytest.raises(DiskFullError, match="needs about 100.0 MiB"):
            check_free_space(small / "x.h5ad", 100 * 2 ** 20)
        synthetic_slides[2].write_h5ad(tmp_path / "q.h5ad")
        code = main(["predict", "--model", str(finished_run), "--slide", str(tmp_path / "q.h5ad"),
                     "--out", str(small / "p.h5ad")])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and ("MiB free" in err or "no space left" in err), err
        assert not list(small.iterdir())  # nothing half-written left
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


def test_enospc_deep_inside_a_library_is_named_in_one_line():
    import errno

    from cli.main import disk_full

    inner = OSError(errno.ENOSPC, "No space left on device", "/data/cache/x.h5")
    try:
        try:
            raise inner
        except OSError as e:
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed") from e
    except RuntimeError as outer:
        assert disk_full(outer).startswith("no space left on the device writing /data/cache/x.h5")
    assert disk_full(RuntimeError("something else")) is None
