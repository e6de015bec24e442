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
