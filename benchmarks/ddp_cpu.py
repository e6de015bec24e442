"""Data-parallel training on the CPU: epoch time of 1 and 2 gloo processes, and the scaling efficiency.

The workload fine-tunes a small CNN from patches (BLEEP recipe, the backbone trained end to end), so the
step is compute-bound as on a GPU. Rows:

- ``1 proc × 1 thread``: the baseline of the data-parallel machinery;
- ``2 proc × 1 thread``: ``stgraph train --nproc 2`` (the same global batches, half each);
- ``1 proc × 2 threads``: what one process gets from the same two cores with intra-op threads;
- ``1 proc × 2 threads, bf16``: CPU autocast to bfloat16;
- ``2 independent 1-thread runs at once`` (control, no communication): how much two compute-bound
  processes slow each other on this machine, i.e. the best a two-process run could do here.

Scaling efficiency = t(1 proc × 1 thread) / (2 × t(2 proc × 1 thread)). Epoch time = median of the
epochs after the first (which includes start-up work). Writes ``benchmarks/results/ddp_cpu.json``.

    python benchmarks/ddp_cpu.py [--epochs 4] [--side 16]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--side", type=int, default=16, help="spots per side of each of the 3 synthetic slides")
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()

    from stgraph.data.synthetic import make_synthetic_collection

    tmp = Path(tempfile.mkdtemp(prefix="stgraph_ddp_"))
    slides = []
    for i, ad in enumerate(make_synthetic_collection(n_slides=3, n_rows=args.side, n_cols=args.side,
                                                     n_genes=100, spacing=32)):
        slides.append(str(tmp / f"slide{i}.h5ad"))
        ad.write_h5ad(slides[-1])
    overrides = ["model.image_encoder.backbone=test_resnet", "model.image_encoder.pretrained=false",
                 "model.image_encoder.weights=null", f"model.image_encoder.input_size={args.input_size}",
                 "model.image_encoder.freeze=none", "model.embed_dim=64", "data.patch_size=64",
                 "data.n_top_hvg=50", "data.harmony=false", f"data.cache_dir={tmp / 'cache'}",
                 f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}", "train.progress=false",
                 "train.device=cpu", "train.val_fraction=0"]
    cases = [("1 proc x 1 thread", 1, 1, "32"), ("2 proc x 1 thread", 2, 1, "32"),
             ("1 proc x 2 threads", 1, 2, "32"), ("1 proc x 2 threads, bf16", 1, 2, "bf16")]
    rows = []

    def command(out: Path, nproc: int, precision: str) -> list[str]:
        return [sys.executable, "-m", "stgraph.cli", "train", "--config", str(REPO / "configs" / "bleep.yaml"),
                "--data", *slides, "--out", str(out), "--nproc", str(nproc), *overrides,
                f"train.precision={precision}"]

    def epoch_seconds(out: Path) -> tuple[float, float]:
        log = pd.read_csv(out / "log.csv").query("split == 'train'")
        return float(log["seconds"].iloc[1:].median()), float(log["total"].iloc[-1])

    for label, nproc, threads, precision in cases:
        out = tmp / f"run_{len(rows)}"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        t0 = time.perf_counter()
        proc = subprocess.run(command(out, nproc, precision), env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-2000:])
        epoch_s, loss = epoch_seconds(out)
        rows.append({"case": label, "processes": nproc, "threads_per_process": threads, "precision": precision,
                     "epoch_s": round(epoch_s, 3), "wall_s": round(wall, 1), "final_loss": round(loss, 4)})
        print(rows[-1], flush=True)
    # Control: two ordinary one-process runs at the same time (each does the whole epoch's work).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    outs = [tmp / "control_a", tmp / "control_b"]
    procs = [subprocess.Popen(command(o, 1, "32"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for o in outs]
    if any(p.wait() != 0 for p in procs):
        raise SystemExit("the control runs failed")
    control = float(np.mean([epoch_seconds(o)[0] for o in outs]))
    rows.append({"case": "2 independent 1-thread runs at once", "processes": 2, "threads_per_process": 1,
                 "precision": "32", "epoch_s": round(control, 3)})
    print(rows[-1], flush=True)
    t = {r["case"]: r["epoch_s"] for r in rows}
    n_spots = 3 * args.side ** 2
    result = {
        "benchmark": "ddp_cpu", "machine": machine(), "n_spots": n_spots, "epochs": args.epochs,
        "input_size": args.input_size, "batch_size": args.batch_size, "backbone": "test_resnet (fine-tuned)",
        "rows": rows,
        "speedup_2proc_vs_1proc_1thread": round(t["1 proc x 1 thread"] / t["2 proc x 1 thread"], 3),
        "scaling_efficiency": round(t["1 proc x 1 thread"] / (2 * t["2 proc x 1 thread"]), 3),
        "speedup_2proc_vs_1proc_2threads": round(t["1 proc x 2 threads"] / t["2 proc x 1 thread"], 3),
        "bf16_speedup_cpu": round(t["1 proc x 2 threads"] / t["1 proc x 2 threads, bf16"], 3),
        # Two concurrent processes each doing a whole epoch take `control` s; a perfect two-process run does
        # half the work per process, so its bound on this machine is control / 2.
        "machine_parallel_slowdown": round(control / t["1 proc x 1 thread"], 3),
        "efficiency_vs_machine_bound": round((control / 2) / t["2 proc x 1 thread"], 3),
    }
    path = write_results("ddp_cpu", result)
    print({k: v for k, v in result.items() if k not in ("rows", "machine")})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
