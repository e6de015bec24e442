"""Training in two gloo processes on the CPU: same losses, weights and predictions as one process on the same
global batches; one run folder; resume of a killed run."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

from conftest import CONFIGS, tiny_overrides

#: Exact-equality settings: cached features (no augmentation of patches) and no dropout.
EXACT = ["model.image_encoder.freeze=all", "model.image_encoder.cache_features=true", "train.augment=false",
         "model.image_head_dropout=0", "model.spot_head_dropout=0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------- primitives, in-process
def _primitives_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from stgraph.training.distributed import all_reduce_gradients, gather_rows

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    full = torch.randn(5, 3)
    sizes = [3, 2]  # unequal slices
    start = sum(sizes[:rank])
    local = full[start : start + sizes[rank]].clone().requires_grad_(True)
    gathered = gather_rows(local, sizes)
    # The global loss on every rank; the gradient reaches only this rank's rows.
    (gathered ** 2 * torch.arange(1.0, 6.0)[:, None]).sum().backward()

    w = torch.nn.Parameter(torch.zeros(2))
    unused = torch.nn.Parameter(torch.zeros(2))
    w.grad = torch.full((2,), float(rank + 1))
    if rank == 1:
        unused.grad = torch.ones(2)  # a parameter only one rank reached
    all_reduce_gradients([w, unused], op="mean")
    torch.save({"gathered": gathered.detach(), "grad": local.grad, "w": w.grad, "unused": unused.grad},
               f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_gather_rows_and_gradient_reduction(tmp_path):
    mp.spawn(_primitives_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    full = torch.randn(5, 3)
    weights = torch.arange(1.0, 6.0)[:, None]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for r in (r0, r1):
        torch.testing.assert_close(r["gathered"], full)  # rank order, unequal slices
        torch.testing.assert_close(r["w"], torch.full((2,), 1.5))  # mean of 1 and 2
        torch.testing.assert_close(r["unused"], torch.full((2,), 0.5))  # None counts as zeros
    # d/dx Σ c_i x_i² = 2 c_i x_i, only for the rank's own rows
    torch.testing.assert_close(r0["grad"], 2 * weights[:3] * full[:3])
    torch.testing.assert_close(r1["grad"], 2 * weights[3:] * full[3:])


# ------------------------------------------------------------------------------- first step, in-process
def _first_step_worker(rank: int, world: int, port: int, out: str, overrides: list) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    result = _one_step(overrides)
    torch.save(result, f"{out}/rank{rank}.pt")
    import torch.distributed as dist

    dist.destroy_process_group()


def _one_step(overrides: list) -> dict:
    """One epoch of one global batch (batch_size ≥ the training spots): its loss and the weights after it."""
    from stgraph.config import load_config
    from stgraph.data.synthetic import make_synthetic_collection
    from stgraph.training import train_model

    slides = make_synthetic_collection(n_slides=3, n_rows=8, n_cols=8, n_genes=30, spacing=32)
    config = load_config(CONFIGS / "bleep.yaml", overrides)
    run = train_model(config, slides)
    train_rows = run.result.history.query("split == 'train'")
    return {"loss": float(train_rows["total"].iloc[0]),
            "state": {k: v.detach().clone() for k, v in run.model.state_dict().items()}}


def test_first_step_loss_and_update_equal_single_process(tmp_path):
    overrides = tiny_overrides(tmp_path / "cache", epochs=1) + EXACT + ["train.batch_size=4096",
                                                                         "train.val_fraction=0"]
    single = _one_step(overrides)  # also fills the feature cache the two ranks read
    mp.spawn(_first_step_worker, args=(2, _free_port(), str(tmp_path), overrides), nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        # Every rank evaluates the whole global batch: the same loss, the same gradient, the same step.
        assert got["loss"] == pytest.approx(single["loss"], rel=1e-5)
        for k, v in single["state"].items():
            torch.testing.assert_close(got["state"][k], v, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------- whole runs, CLI
def _write_slides(folder: Path) -> list[str]:
    from stgraph.data.synthetic import make_synthetic_collection

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ad in enumerate(make_synthetic_collection(n_slides=3, n_rows=10, n_cols=10, n_genes=40, spacing=32)):
        paths.append(str(folder / f"slide{i}.h5ad"))
        ad.write_h5ad(paths[-1])
    return paths


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "stgraph.cli", *args]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


# Two training processes end to end: minutes on a shared 2-core machine; run by .ci/run (make test-slow).
@pytest.mark.slow
def test_two_process_run_matches_single_process_run(tmp_path):
    from stgraph.runfolder import load_run

    slides = _write_slides(tmp_path / "data")
    common = ["--config", str(CONFIGS / "bleep.yaml"), "--data", *slides,
              *tiny_overrides(tmp_path / "cache", epochs=3), *EXACT, "train.batch_size=64"]
    for out, extra in (("one", []), ("two", ["--nproc", "2"])):
        proc = subprocess.run(_cli("train", "--out", str(tmp_path / out), *extra, *common), env=_env(),
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "in 2 processes" in proc.stdout
    one, two = (pd.read_csv(tmp_path / n / "log.csv") for n in ("one", "two"))
    assert len(one) == len(two) == 6  # 3 epochs × (train, val): written once, by rank 0
    np.testing.assert_allclose(two["total"], one["total"], rtol=1e-5)
    # the run folder is written once: no second run, no left-over temporary folders
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "data", "one", "two"]
    import json

    info = json.loads((tmp_path / "two" / "run.json").read_text())
    assert info["world_size"] == 2 and info["precision"] == "32"
    a, b = load_run(tmp_path / "one", device="cpu"), load_run(tmp_path / "two", device="cpu")
    for k, v in a.model.state_dict().items():
        torch.testing.assert_close(b.model.state_dict()[k], v, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(b.reference.expression, a.reference.expression)
    np.testing.assert_allclose(b.reference.embeddings, a.reference.embeddings, rtol=1e-4, atol=1e-5)


# Two training processes end to end: minutes on a shared 2-core machine; run by .ci/run (make test-slow).
@pytest.mark.slow
def test_resume_of_a_killed_two_process_run(tmp_path):
    slides = _write_slides(tmp_path / "data")
    out = tmp_path / "run"
    common = ["--config", str(CONFIGS / "bleep.yaml"), "--data", *slides, "--out", str(out), "--nproc", "2",
              *tiny_overrides(tmp_path / "cache"), *EXACT, "train.batch_size=64"]
    proc = subprocess.Popen(_cli("train", *common, "train.epochs=100000"), env=_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = out / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if last.is_file() and torch.load(last, weights_only=False)["epoch"] >= 2:
                break
            time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, with no chance to clean up
        proc.wait()
    killed_at = int(torch.load(last, weights_only=False)["epoch"])
    before = pd.read_csv(out / "log.csv")
    assert json.loads((out / "run.json").read_text())["state"] == "training"  # killed: marked incomplete

    epochs = killed_at + 3
    done = subprocess.run(_cli("train", "--resume", *common, f"train.epochs={epochs}"), env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    log = pd.read_csv(out / "log.csv")
    train = log.query("split == 'train'")
    assert list(train["epoch"]) == list(range(epochs))  # continued from the checkpoint, nothing repeated
    kept = before[before["epoch"] <= killed_at].reset_index(drop=True)
    pd.testing.assert_frame_equal(log[log["epoch"] <= killed_at].reset_index(drop=True)[kept.columns], kept)
    assert json.loads((out / "run.json").read_text())["state"] == "complete" and (out / "model.pt").is_file()
