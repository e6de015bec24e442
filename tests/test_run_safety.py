"""Issue 20: a run folder is owned while it is written, says whether it is complete, and a killed writer's
leftovers are repaired or refused by the next command; --force replaces only a run folder.

Concurrent writers are real processes (forked from the test process, so they start in milliseconds); a
"kill" is SIGKILL, which runs no cleanup at all.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from stgraph.training import train_model

fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")


@pytest.fixture
def finished_run(tiny_config, synthetic_slides, tmp_path):
    out = tmp_path / "runs" / "base"
    train_model(tiny_config("bleep.yaml", "train.epochs=1", "data.harmony=false"), synthetic_slides[:2], out=out)
    return out


def _cfg(tiny_config, *extra):
    return tiny_config("bleep.yaml", "data.harmony=false", *extra)


def _fitted(tiny_config, slides):
    from stgraph.preprocess.prepare import fit_preprocessor

    return fit_preprocessor(_cfg(tiny_config, "train.epochs=1"), slides)


def _writer_in_child(target, *args):
    """Start ``target(ready_file, *args)`` in a forked process; return (process, ready_file) once it is ready."""
    ctx = multiprocessing.get_context("fork")
    ready = Path(args[0]).parent.parent / f"ready-{time.monotonic_ns()}"
    proc = ctx.Process(target=target, args=(str(ready), *args), daemon=True)
    proc.start()
    deadline = time.monotonic() + 60
    while not ready.exists():
        if not proc.is_alive() or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the child writer never got ready (exit code {proc.exitcode})")
        time.sleep(0.02)
    return proc, ready


def _kill(proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)


def _train_then_hang(ready, out, cfg, slides, preprocessed, resume=False, force=False, hang_in="fit"):
    """A training job that stops (until killed) at ``hang_in``: ``fit`` (after its checks and start files),
    or ``best`` (inside the atomic write of checkpoints/best.pt, its temporary on disk).

    The preprocessing is fitted by the parent (scanpy's numba kernels must not run in a forked child)."""
    from stgraph.training import trainer
    from stgraph.utils import io

    if hang_in == "fit":
        def fit(self, resume=False):
            Path(ready).touch()
            time.sleep(600)
        trainer.Trainer.fit = fit
    else:
        original = trainer.Trainer._save

        def save(self, name, state):
            if name != "best.pt":
                return original(self, name, state)
            import torch

            with io.atomic_path(self.run_dir / "checkpoints" / name) as tmp:
                torch.save(state, tmp)
                Path(ready).touch()
                time.sleep(600)
        trainer.Trainer._save = save
    train_model(cfg, slides, out=out, resume=resume, force=force, preprocessed=preprocessed)


# ---------------------------------------------------------------- 1. --force replaces only a run folder
def test_force_refuses_a_folder_that_is_not_a_run(tiny_config, synthetic_slides, tmp_path, monkeypatch):
    from stgraph.preprocess import prepare
    from stgraph.training.job import NotARunFolderError

    user = tmp_path / "userdir"
    user.mkdir()
    (user / "thesis.txt").write_text("precious")
    monkeypatch.setattr(prepare, "fit_preprocessor", lambda *a, **k: pytest.fail("computed before refusing"))
    with pytest.raises(NotARunFolderError, match="thesis.txt"):
        train_model(_cfg(tiny_config, "train.epochs=1"), synthetic_slides[:2], out=user, force=True)
    assert (user / "thesis.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["userdir"]


def test_force_refuses_a_run_folder_holding_user_files(finished_run, tiny_config, synthetic_slides):
    from stgraph.training.job import NotARunFolderError

    (finished_run / "notes.txt").write_text("mine")
    (finished_run / "checkpoints" / "epoch3_backup.pt").write_text("mine too")
    with pytest.raises(NotARunFolderError, match="notes.txt.*epoch3_backup.pt"):
        train_model(_cfg(tiny_config, "train.epochs=1"), synthetic_slides[:2], out=finished_run, force=True)
    assert (finished_run / "notes.txt").read_text() == "mine"


def test_cli_force_on_a_user_folder_is_one_line_before_reading_slides(tmp_path, capsys):
    from cli.main import main

    user = tmp_path / "userdir"
    user.mkdir()
    (user / "thesis.txt").write_text("precious")
    code = main(["train", "--config", "configs/bleep.yaml", "--data", str(tmp_path / "no_such_slide.h5ad"),
                 "--out", str(user), "--force", "train.epochs=1",
                 "model.image_encoder.pretrained=false"])
    err = capsys.readouterr().err
    assert code == 2 and "thesis.txt" in err and "no_such_slide" not in err and err.count("\n") == 1
    assert (user / "thesis.txt").read_text() == "precious"


# ---------------------------------------------------------------- 2. one writer at a time
@fork
def test_a_second_train_into_a_folder_being_trained_is_refused(tiny_config, synthetic_slides, tmp_path):
    from stgraph.utils.lock import FolderLockedError

    out = tmp_path / "r_two"
    proc, _ = _writer_in_child(_train_then_hang, out, _cfg(tiny_config, "train.epochs=1", "train.seed=1"),
                               synthetic_slides[:2], _fitted(tiny_config, synthetic_slides[:2]))
    try:
        for force in (False, True):
            with pytest.raises(FolderLockedError, match=f"pid {proc.pid}"):
                train_model(_cfg(tiny_config, "train.epochs=1", "train.seed=2"), synthetic_slides[:2], out=out,
                            force=force)
        assert json.loads((out / "run.json").read_text())["state"] == "training"
    finally:
        _kill(proc)
    # the owner is gone: its lock is stale, and its half-built run (no checkpoint yet) is replaced
    run = train_model(_cfg(tiny_config, "train.epochs=1", "train.seed=2"), synthetic_slides[:2], out=out)
    assert run.run_dir == out and json.loads((out / "run.json").read_text())["state"] == "complete"
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".r_two")) == []
    assert not (out / ".stgraph.lock").exists()


@fork
def test_extend_against_a_running_force_train_is_refused(finished_run, tiny_config, synthetic_slides):
    from stgraph.inference import extend_reference, load_run
    from stgraph.utils.lock import FolderLockedError

    loaded = load_run(finished_run)
    reference = (finished_run / "reference.h5").read_bytes()
    proc, _ = _writer_in_child(_train_then_hang, finished_run, _cfg(tiny_config, "train.epochs=1"),
                               synthetic_slides[:2], _fitted(tiny_config, synthetic_slides[:2]), False, True)
    try:
        with pytest.raises(FolderLockedError, match=f"pid {proc.pid}"):
            extend_reference(loaded, [synthetic_slides[2]])
        assert (finished_run / "reference.h5").read_bytes() == reference
        assert not (finished_run / "reference.prev.h5").exists()
    finally:
        _kill(proc)
    # the killed --force left its hidden build folder; the next writer (extend) removes it
    assert [p for p in finished_run.parent.iterdir() if p.name.startswith(".base.new-")]
    extend_reference(loaded, [synthetic_slides[2]])
    assert [p.name for p in finished_run.parent.iterdir()] == ["base"]
    info = json.loads((finished_run / "run.json").read_text())
    assert info["n_reference_spots"] == loaded.reference.n_spots


def test_cli_extend_while_a_writer_holds_the_run_is_one_line(finished_run, tmp_path, capsys):
    from cli.main import main

    child = os.fork()
    if child == 0:  # a writer holding the run, then waiting to be killed
        try:
            from stgraph.utils.lock import FolderLock

            FolderLock(finished_run).acquire()
            (tmp_path / "held").touch()
            time.sleep(600)
        finally:
            os._exit(0)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "held").exists():
            assert time.monotonic() < deadline and os.waitpid(child, os.WNOHANG) == (0, 0), "the holder died"
            time.sleep(0.02)
        code = main(["extend", "--model", str(finished_run), "--data", str(tmp_path / "not_read.h5ad")])
        err = capsys.readouterr().err
        assert code == 2 and f"pid {child}" in err and "not_read" not in err
    finally:
        os.kill(child, signal.SIGKILL)
        try:
            os.waitpid(child, 0)
        except ChildProcessError:  # already reaped above
            pass


def test_a_stale_lock_record_is_taken_over_and_a_live_one_refused(tmp_path):
    import socket

    from stgraph.utils.lock import LOCK_NAME, FolderLock, FolderLockedError

    folder = tmp_path / "run"
    folder.mkdir()
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    record = {"pid": dead, "host": socket.gethostname(), "started": "then"}
    (folder / LOCK_NAME).write_text(json.dumps(record))
    with FolderLock(folder) as lock:  # flock free and the recorded pid gone: stale
        assert lock.stale == record
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (folder / LOCK_NAME).exists()
    # a record from another host cannot be proven stale: refused, naming the file to remove
    (folder / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "started": "now"}))
    with pytest.raises(FolderLockedError, match="elsewhere.example.*remove"):
        FolderLock(folder).acquire()


# ---------------------------------------------------------------- 3. crash-consistent state, cleanup
@fork
def test_a_killed_resume_is_refused_by_predict_then_repaired_by_resume(finished_run, tiny_config,
                                                                        synthetic_slides):
    from stgraph.inference import load_run
    from stgraph.runfolder import ModelFolderError

    proc, _ = _writer_in_child(_train_then_hang, finished_run, _cfg(tiny_config, "train.epochs=3"),
                               synthetic_slides[:2], _fitted(tiny_config, synthetic_slides[:2]), True, False, "best")
    _kill(proc)
    leftovers = list((finished_run / "checkpoints").glob(".best.pt.*.tmp"))
    assert leftovers  # what SIGKILL leaves: a temporary checkpoint, and a run that says "training"
    assert json.loads((finished_run / "run.json").read_text())["state"] == "training"
    with pytest.raises(ModelFolderError, match=r"not complete.*--resume"):
        load_run(finished_run)
    run = train_model(_cfg(tiny_config, "train.epochs=3"), synthetic_slides[:2], out=finished_run, resume=True)
    assert run.result.history["epoch"].max() == 2
    assert not list((finished_run / "checkpoints").glob(".*.tmp"))
    assert load_run(finished_run).info["state"] == "complete"


def test_predict_refuses_a_run_json_that_is_not_a_mapping(finished_run, tmp_path, capsys):
    from cli.main import main

    (finished_run / "run.json").write_text("[1, 2]")
    code = main(["predict", "--model", str(finished_run), "--image", "x.png", "--spots", "x.csv",
                 "--out", str(tmp_path / "p.h5ad")])
    err = capsys.readouterr().err
    assert code == 2 and "run.json" in err and "mapping" in err


def test_force_cleans_the_build_folders_of_killed_writers_but_nothing_else(finished_run, tiny_config,
                                                                           synthetic_slides):
    import socket

    from stgraph.utils.lock import LOCK_NAME

    parent = finished_run.parent
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    killed = parent / ".base.new-k1ll3d"  # a killed --force: our name, our lock, its writer gone
    (killed / "checkpoints").mkdir(parents=True)
    (killed / LOCK_NAME).write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "started": "x"}))
    (killed / "checkpoints" / "last.pt").write_bytes(b"0" * 1000)
    empty = parent / ".base.new-empty1"  # killed between mkdtemp and its lock
    empty.mkdir()
    users = parent / ".base.new-users"  # our pattern, but no lock of ours: not provably ours
    users.mkdir()
    (users / "data.txt").write_text("keep")
    stale_tmp = finished_run / "checkpoints" / ".best.pt.abc123.tmp"
    stale_tmp.write_bytes(b"half")
    train_model(_cfg(tiny_config, "train.epochs=1"), synthetic_slides[:2], out=finished_run, force=True)
    assert sorted(p.name for p in parent.iterdir()) == [".base.new-users", "base"]
    assert (users / "data.txt").read_text() == "keep"
    assert not stale_tmp.exists()


# ---------------------------------------------------------------- 4. every output checked before any slide is read
@pytest.fixture
def no_compute(monkeypatch):
    """Fail the test if a command reads a slide or loads the run (i.e. got past its destination checks)."""
    import stgraph.data
    import stgraph.inference

    def boom(*a, **k):
        raise AssertionError("the command read a slide or the run before refusing its output")

    monkeypatch.setattr(stgraph.inference, "load_run", boom)
    monkeypatch.setattr(stgraph.data, "read_slide", boom)


@pytest.fixture
def query_files(synthetic_slides, tmp_path):
    paths = []
    for i in (0, 1):
        paths.append(tmp_path / f"q{i}.h5ad")
        synthetic_slides[i].write_h5ad(paths[-1])
    return [str(p) for p in paths]


def test_predict_outputs_are_refused_before_any_slide_is_read(finished_run, query_files, tmp_path, capsys,
                                                              no_compute):
    from cli.main import main

    blocker = tmp_path / "file"
    blocker.write_text("x")
    cases = [
        ([query_files[0]], blocker / "p.h5ad", "not a folder"),
        ([query_files[0]], Path("/proc/p.h5ad"), "not writable"),
        ([query_files[0]], finished_run / "p.h5ad", "run folder"),
        (query_files, finished_run, "run folder"),
        (query_files, tmp_path / "preds.txt", "no suffix"),
        (query_files, blocker, "not a folder"),
    ]
    for slides, out, message in cases:
        assert main(["predict", "--model", str(finished_run), "--slide", *slides, "--out", str(out)]) == 2, out
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (out, err)
    assert not (tmp_path / "preds.txt").exists()
    assert sorted(p.name for p in finished_run.iterdir()) == sorted(
        ["checkpoints", "config.yaml", "genes.txt", "log.csv", "loss_curve.png", "model.pt", "preprocess.json",
         "preprocess.npz", "reference.h5", "run.json"])


def test_predict_k_0_is_refused_before_anything_is_read(finished_run, query_files, tmp_path, capsys, no_compute):
    from cli.main import main

    assert main(["predict", "--model", str(finished_run), "--slide", query_files[0], "--k", "0",
                 "--out", str(tmp_path / "p.h5ad")]) == 2
    assert "--k" in capsys.readouterr().err


def test_evaluate_refuses_earlier_results_and_names_the_valid_folds(query_files, tmp_path, capsys):
    from cli.main import main

    out = tmp_path / "eval"
    out.mkdir()
    (out / "results.csv").write_text("method,fold\nmine,B4\n")
    base = ["evaluate", "--config", "configs/bleep.yaml", "--data", *query_files, "--no-baselines",
            "model.image_encoder.pretrained=false"]
    assert main(base + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "results.csv" in err and "--force" in err
    assert (out / "results.csv").read_text() == "method,fold\nmine,B4\n"
    assert main(base + ["--out", str(tmp_path / "fresh"), "--only-folds", "C9"]) == 2
    err = capsys.readouterr().err
    assert "C9" in err and "slide0" in err and "slide1" in err and err.count("\n") == 1


def test_plot_of_a_file_that_is_not_h5ad_names_it(tmp_path, capsys):
    from cli.main import main

    text = tmp_path / "text.tif"
    text.write_text("not an image, not an h5ad")
    assert main(["plot", "--pred", str(text), "--genes", "A", "--out", str(tmp_path / "m.png")]) == 2
    err = capsys.readouterr().err
    assert "text.tif" in err and err.count("\n") == 1


def test_overrides_between_options_are_overrides():
    from cli.main import parse_args

    args = parse_args(["train", "--config", "c.yaml", "train.epochs=1", "--out", "r", "--force", "train.lr=0.1"])
    assert args.overrides == ["train.epochs=1", "train.lr=0.1"] and args.out == "r" and args.force
    with pytest.raises(SystemExit):
        parse_args(["train", "--config", "c.yaml", "train.epochs=1", "--out", "r", "stray"])


# ---------------------------------------------------------------- 5. bounds on sizes, before allocating
@pytest.fixture
def wsi_file(tmp_path):
    import numpy as np

    from stgraph.data.wsi_synthetic import pink_texture, write_pyramidal_tiff

    rng = np.random.default_rng(0)
    img = np.full((1024, 1024, 3), 248, np.uint8)  # a tissue disc of 200 µm radius at 0.5 µm/px
    yy, xx = np.mgrid[0:1024, 0:1024]
    disc = (xx - 512) ** 2 + (yy - 512) ** 2 <= 400**2
    img[disc] = pink_texture((1024, 1024), rng)[disc]
    return write_pyramidal_tiff(tmp_path / "slide.tif", img, levels=2, mpp=0.5)


@pytest.mark.parametrize("options, message", [
    (["--grid", "0.5"], r"about [\d,]+ spots \(> 200,000\).*--max-spots.*GiB"),  # ~500,000 on 0.126 mm²
    (["--grid", "5", "--max-spots", "100"], r"about [\d,]+ spots \(> 100\)"),
    (["--grid", "1e9"], "no spot of the"),
    (["--mpp", "1e6"], "outside the range"),
    (["--k", "0"], "--k"),
])
def test_whole_slide_sizes_are_bounded_before_any_feature(finished_run, wsi_file, tmp_path, capsys, monkeypatch,
                                                          options, message):
    from cli.main import main
    from stgraph.inference import wsi

    monkeypatch.setattr(wsi, "wsi_features", lambda *a, **k: pytest.fail("features computed before refusing"))
    code = main(["predict", "--model", str(finished_run), "--wsi", str(wsi_file), "--out", str(tmp_path / "p.h5ad"),
                 "--train-mpp", "1.0", *options])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    import re

    assert re.search(message, err), err


def test_a_swap_killed_between_its_renames_is_named_by_predict_and_restored_by_the_next_train(
        finished_run, tiny_config):
    import socket

    from stgraph.inference import load_run
    from stgraph.runfolder import ModelFolderError
    from stgraph.training.job import check_train_inputs
    from stgraph.utils.lock import LOCK_NAME

    aside = finished_run.parent / ".base.old-k1ll3d"
    os.replace(finished_run, aside)  # what a kill between the two renames of --force's swap leaves
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    (aside / LOCK_NAME).write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "started": "x"}))
    with pytest.raises(ModelFolderError, match=r"\.base\.old-k1ll3d.*puts it back"):
        load_run(finished_run)
    with pytest.raises(FileExistsError, match="already exists"):  # restored, then refused without --force
        check_train_inputs(_cfg(tiny_config, "train.epochs=1"), finished_run)
    assert load_run(finished_run).info["state"] == "complete"


def test_outputs_are_refused_inside_a_run_that_is_still_training(tmp_path):
    """run.json (state: training) is written first and model.pt last: a run being trained is a run folder."""
    from stgraph.utils.io import DestinationError, check_not_in_run_folder
    from stgraph.utils.lock import LOCK_NAME

    training, locked, plain = tmp_path / "training", tmp_path / "locked", tmp_path / "plain"
    for folder in (training, locked, plain):
        folder.mkdir()
    (training / "run.json").write_text('{"state": "training"}')
    (locked / LOCK_NAME).write_text("{}")
    for folder in (training, locked):
        with pytest.raises(DestinationError, match="stgraph run folder"):
            check_not_in_run_folder(folder / "pred.h5ad")
    check_not_in_run_folder(plain / "pred.h5ad")  # an ordinary folder is fine


# ------------------------------------------------------------------ issue 29: nothing lost, nothing stale
def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_predict_never_replaces_its_input_slides(finished_run, query_files, tmp_path, capsys, no_compute):
    """An output that is, contains or lies inside an input is refused before anything is read, --force or not:
    `--slide D/q0.h5ad --out D --force` and a glob over D with --out D replaced the inputs with predictions."""
    from cli.main import main

    folder = Path(query_files[0]).parent
    before = _snapshot(folder)
    for slides, out in (([query_files[0]], folder), ([str(folder / "q*.h5ad")], folder),
                        ([query_files[0]], Path(query_files[0])), ([query_files[0]], folder / ".." / folder.name)):
        assert main(["predict", "--model", str(finished_run), "--slide", *slides, "--out", str(out), "--force"]) == 2
        err = capsys.readouterr().err
        assert "never replaces or mixes with what it is computed from" in err and err.count("\n") == 1, err
    assert _snapshot(folder) == before


def test_force_replaces_only_stgraph_outputs(finished_run, query_files, tmp_path, capsys):
    from cli.main import main

    mine = tmp_path / "out" / "notes.h5ad"
    mine.parent.mkdir()
    mine.write_bytes(b"the user's own file")
    assert main(["predict", "--model", str(finished_run), "--slide", query_files[0], "--out", str(mine), "--force"]) == 2
    assert "not an output stgraph wrote" in capsys.readouterr().err and mine.read_bytes() == b"the user's own file"
    pred = tmp_path / "out" / "pred.h5ad"
    for _ in range(2):  # an earlier prediction is replaced
        assert main(["predict", "--model", str(finished_run), "--slide", query_files[0], "--out", str(pred),
                     "--force"]) == 0


def test_a_lock_that_is_a_link_to_a_user_file_is_refused_and_the_file_kept(tmp_path):
    from stgraph.utils.lock import LOCK_NAME, FolderLock, FolderLockedError

    run, user = tmp_path / "run", tmp_path / "thesis.txt"
    run.mkdir()
    user.write_text("four years of work")
    (run / LOCK_NAME).symlink_to(user)
    with pytest.raises(FolderLockedError, match="symbolic link"):
        FolderLock(run).acquire()
    assert user.read_text() == "four years of work"


def test_a_writer_that_lost_its_lock_writes_nothing_more(finished_run, synthetic_slides, monkeypatch):
    """Two extends where the lock was removed in between: the first writer finds, just before writing, that its
    lock is no longer its own, and stops (before: both exit 0 and the first slide vanished from the reference)."""
    import stgraph.inference.predict as predict_mod
    from stgraph.inference import extend_reference, load_run
    from stgraph.utils.lock import LOCK_NAME, FolderLock, FolderLockedError

    run = load_run(finished_run)
    before = _snapshot(finished_run)
    real = predict_mod.embed_slide

    def embed_while_another_writer_takes_over(*a, **k):
        (finished_run / LOCK_NAME).unlink()  # "removed as the refusal suggested"
        FolderLock(finished_run).acquire()  # a second writer now owns the folder (this process's other lock)
        return real(*a, **k)

    monkeypatch.setattr(predict_mod, "embed_slide", embed_while_another_writer_takes_over)
    with pytest.raises(FolderLockedError, match="was removed or replaced while this process held it"):
        extend_reference(run, [synthetic_slides[2]])
    after = _snapshot(finished_run)
    after.pop(LOCK_NAME, None)
    before.pop(LOCK_NAME, None)
    assert after == before


def test_the_refusal_of_a_live_writer_does_not_invite_removing_its_lock(tmp_path):
    from stgraph.utils.lock import FolderLock, FolderLockedError, check_unlocked

    folder = tmp_path / "run"
    folder.mkdir()
    proc, ready = _writer_in_child(_hold_lock, str(folder / "x"), str(folder))
    try:
        with pytest.raises(FolderLockedError) as err:
            check_unlocked(folder)
        assert "wait for it to finish" in str(err.value) and "remove" not in str(err.value)
    finally:
        _kill(proc)


def _hold_lock(ready, _unused, folder):
    from stgraph.utils.lock import FolderLock

    FolderLock(Path(folder)).acquire()
    Path(ready).write_text("ok")
    time.sleep(60)


def test_force_on_a_link_to_a_run_replaces_that_run_and_keeps_the_link(finished_run, tiny_config, synthetic_slides,
                                                                      tmp_path):
    latest = tmp_path / "runs" / "latest"
    latest.symlink_to(finished_run)
    old_created = json.loads((finished_run / "run.json").read_text())["created"]
    train_model(tiny_config("bleep.yaml", "train.epochs=1", "data.harmony=false"), synthetic_slides[:2], out=latest,
                force=True)
    assert latest.is_symlink() and Path(os.path.realpath(latest)) == finished_run.resolve()
    assert json.loads((finished_run / "run.json").read_text())["state"] == "complete"
    assert not [p for p in latest.parent.iterdir() if p.name.startswith((".latest.", ".base."))]
    # a link to something that is not a run is refused, and the target untouched
    user = tmp_path / "userdir"
    user.mkdir()
    (user / "thesis.txt").write_text("x")
    (tmp_path / "runs" / "mine").symlink_to(user)
    from stgraph.training.job import NotARunFolderError

    with pytest.raises(NotARunFolderError, match="not a stgraph run folder"):
        train_model(tiny_config("bleep.yaml", "train.epochs=1"), synthetic_slides[:2], out=tmp_path / "runs" / "mine",
                    force=True)
    assert (user / "thesis.txt").read_text() == "x"
    assert old_created  # the earlier run existed


def test_cleanup_removes_a_leftover_link_of_an_earlier_swap_and_nothing_else(finished_run, tmp_path):
    from stgraph.runfolder import clean_stale_files

    left = finished_run.parent / f".{finished_run.name}.old-abcd1234"
    left.symlink_to(tmp_path)
    other = finished_run.parent / f".{finished_run.name}.old-notours"
    other.symlink_to(tmp_path)
    clean_stale_files(finished_run)
    assert not left.is_symlink() and other.is_symlink() and tmp_path.is_dir()


def test_evaluate_refuses_results_anywhere_inside_a_run(finished_run, query_files, capsys, no_compute):
    from cli.main import main

    assert main(["evaluate", "--config", "stgraph", "--data", *query_files, "--out",
                 str(finished_run / "results" / "deep")]) == 2
    assert "is a stgraph run folder" in capsys.readouterr().err


def test_an_image_replaced_under_the_same_name_size_and_mtime_is_another_image(synthetic_slides, tmp_path):
    """cp -p, tar and rsync -t keep name, size and mtime: the patch (and feature) key follows the content."""
    import shutil

    import numpy as np
    from PIL import Image

    from stgraph.data.patches import patch_key
    from stgraph.keys import Key

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(a)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(b)
    assert a.stat().st_size == b.stat().st_size or True
    slide = synthetic_slides[0].copy()
    entry = next(iter(slide.uns[Key.uns.spatial].values()))
    entry["images"] = {}
    entry["metadata"] = {Key.metadata.source_image_path: str(a)}
    first = patch_key(slide, 8)
    stat = a.stat()
    shutil.copyfile(b, a)
    os.utime(a, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert patch_key(slide, 8)["image"] != first["image"]


def test_a_damaged_feature_file_is_recomputed_never_used(tmp_path):
    import numpy as np

    from stgraph.data.feature_store import FeatureStore, StoreDamagedError

    store = FeatureStore(tmp_path)
    x = np.random.default_rng(0).normal(size=(600, 64)).astype(np.float32)
    store.write("s", {"k": 1}, x, chunk_rows=100)
    path = store.path("s", {"k": 1})
    data = bytearray(path.read_bytes())
    at = data.find(x[300].tobytes()[:16])  # a block in the middle of the data
    assert at > 0
    data[at:at + 8] = b"\x00" * 8
    path.write_bytes(bytes(data))
    with pytest.raises(StoreDamagedError, match=str(path.name)):
        store.open("s", {"k": 1}).read_all()
    np.testing.assert_array_equal(store.open("s", {"k": 1})[[0, 1]], x[[0, 1]])  # undamaged chunks still read


def test_a_saved_index_that_was_overwritten_or_is_another_runs_is_rebuilt(tmp_path, caplog):
    import logging

    import numpy as np

    pytest.importorskip("faiss")
    from stgraph.retrieval.reference import ReferenceStore

    rng = np.random.default_rng(0)
    def store(seed):
        r = np.random.default_rng(seed)
        return ReferenceStore(embeddings=r.normal(size=(300, 8)).astype(np.float32),
                              expression=r.random((300, 5)).astype(np.float32), genes=list("abcde"),
                              slide_ids=np.array(["s"] * 300), spot_ids=np.arange(300).astype(str), kind="image")
    a_path, b_path = tmp_path / "a" / "reference.h5", tmp_path / "b" / "reference.h5"
    for s, p in ((store(0), a_path), (store(1), b_path)):
        p.parent.mkdir()
        s.save(p)
    a = ReferenceStore.load(a_path)
    q = rng.normal(size=(20, 8)).astype(np.float32)
    exact = a.predict(q, k=5, backend="torch")
    first = a.predict(q, k=5, backend="faiss")
    index = next(a_path.parent.glob("reference.h5.*.faiss"))
    np.testing.assert_allclose(first, exact, rtol=1e-5, atol=1e-6)
    b = ReferenceStore.load(b_path)
    b.predict(q, k=5, backend="faiss")
    other = next(b_path.parent.glob("reference.h5.*.faiss"))
    for damage in ("another run's", "overwritten"):
        if damage == "another run's":
            index.write_bytes(other.read_bytes())
        else:
            data = bytearray(index.read_bytes())
            data[len(data) // 2: len(data) // 2 + 16] = b"\xff" * 16
            index.write_bytes(bytes(data))
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="stgraph"):
            again = ReferenceStore.load(a_path).predict(q, k=5, backend="faiss")
        assert "saved kNN index not used" in caplog.text, damage
        np.testing.assert_allclose(again, exact, rtol=1e-5, atol=1e-6)


def test_a_run_whose_files_differ_from_run_json_is_refused(finished_run, tmp_path):
    import shutil

    import numpy as np

    from stgraph.retrieval.reference import ReferenceStore
    from stgraph.runfolder import ModelFolderError, load_run

    load_run(finished_run)
    ref = ReferenceStore.load(finished_run / "reference.h5")
    cut = ReferenceStore(embeddings=ref.embeddings[:100], expression=ref.expression[:100], genes=ref.genes,
                         slide_ids=ref.slide_ids[:100], spot_ids=ref.spot_ids[:100], kind=ref.kind, meta=ref.meta)
    shutil.copy2(finished_run / "reference.h5", tmp_path / "saved.h5")
    cut.save(finished_run / "reference.h5", overwrite=True)
    with pytest.raises(ModelFolderError, match="reference.h5 is not the file run.json records"):
        load_run(finished_run)
    shutil.copy2(tmp_path / "saved.h5", finished_run / "reference.h5")
    with open(finished_run / "model.pt", "r+b") as fh:  # one byte flipped in the weights
        fh.seek(fh.seek(0, 2) // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ModelFolderError, match="model.pt is not the file run.json records"):
        load_run(finished_run)
    assert np.isfinite(ref.embeddings).all()


def _fill_features(ready, cache, config_path, slide_path, out):
    import numpy as np

    from stgraph.config import load_config
    from stgraph.data import read_slide
    from stgraph.models import create_image_encoder
    from stgraph.preprocess.prepare import prepare_slide
    from tests.conftest import tiny_overrides

    cfg = load_config(config_path, tiny_overrides(Path(cache)))
    Path(ready).write_text("ok")
    feats = prepare_slide(read_slide(slide_path), cfg, image_encoder=create_image_encoder(cfg)).features
    np.save(out, feats)


@fork
def test_two_processes_filling_the_feature_cache_at_once_both_finish_and_agree(synthetic_slides, tmp_path):
    """Two writers of the same store entry at once: each builds beside and renames onto the final name, so
    both finish, agree, and the entry left is complete (and read back equal)."""
    import numpy as np

    from tests.conftest import CONFIGS

    torch_seeded = tmp_path / "slide.h5ad"
    synthetic_slides[0].write_h5ad(torch_seeded)
    cfg = str(CONFIGS / "stgraph.yaml")
    procs = [_writer_in_child(_fill_features, str(tmp_path / "cache"), cfg, str(torch_seeded),
                              str(tmp_path / f"f{i}.npy"))[0] for i in range(2)]
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    a, b = np.load(tmp_path / "f0.npy"), np.load(tmp_path / "f1.npy")
    np.testing.assert_array_equal(a, b)
    store = tmp_path / "cache" / "features"
    assert not [p for p in store.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_predict_wsi_killed_again_and_again_leaves_no_partial_file(finished_run, tmp_path):
    """kill -9 at five moments of `predict --wsi`: no partial output appears, the abandoned temporaries are
    removed by the next run, and the last run completes the file."""
    import subprocess
    import sys

    import numpy as np

    from stgraph.data.wsi_synthetic import pink_texture, write_pyramidal_tiff

    rng = np.random.default_rng(0)
    img = np.full((1024, 1024, 3), 248, np.uint8)
    img[200:800, 200:800] = pink_texture((600, 600), rng)
    wsi = write_pyramidal_tiff(tmp_path / "s.tif", img, levels=2, mpp=1.0)
    out = tmp_path / "preds" / "s.h5ad"
    cmd = [sys.executable, "-m", "stgraph.cli", "predict", "--model", str(finished_run), "--wsi", str(wsi),
           "--train-mpp", "1", "--grid", "40", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for delay in (1.0, 2.0, 3.0, 4.0, 5.0):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        if out.exists():  # it finished before the kill: the file is whole
            import anndata

            assert anndata.read_h5ad(out).n_obs > 0
            out.unlink()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    import anndata

    assert anndata.read_h5ad(out).n_obs > 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["s.h5ad"]
