"""Where the time goes when torch processes share the cores: the demo's epoch alone and beside two others.

The demo (``make demo``: configs/cpu/bleep.yaml, cached features of five HER2+ sections) trains a few small
matrices per step. On a machine shared with other torch processes, OpenMP threads that spin-wait for each
other, and more threads than free cores, turn a 0.05 s epoch into seconds. This measures the median epoch time
of the demo's training, alone and with two more of the same trainings running at once, under the thread
settings stgraph can choose:

* ``default``: torch's own (a thread per core, libgomp's spin-waiting);
* ``passive``: ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep when they wait);
* ``stgraph``: what the CLI does now (:func:`stgraph.utils.threads.configure_threads`);
* ``spin<N>``: ``GOMP_SPINCOUNT=N`` (idle threads spin N times, then sleep).

Writes ``benchmarks/results/contention.json``. Run it alone on the machine (nothing else CPU-heavy)::

    python benchmarks/contention.py [--epochs 30] [--policies default passive stgraph spin1000]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, os, sys, time
if os.environ.get("BENCH_STGRAPH_THREADS"):
    from stgraph.utils.threads import configure_threads
    configure_threads()
import torch
from stgraph.config import load_config
from stgraph.data.readers import read_her2st
from stgraph.training import train_model
root = sys.argv[1]
cfg = load_config("cpu/bleep", [f"data.genes={root}/her_hvg_cut_1000.npy", f"data.cache_dir={sys.argv[2]}",
                                f"train.epochs={sys.argv[3]}", "train.progress=false", "trust.reliability=false"])
slides = [read_her2st(root, s) for s in ("B4", "C2", "C3", "C4", "C5")]
run = train_model(cfg, slides)
h = run.result.history.query("split == 'train'")["seconds"].tolist()
print(json.dumps({"epoch_seconds": h, "threads": torch.get_num_threads()}))
"""


def _env(policy: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if policy.startswith("spin"):
        env["GOMP_SPINCOUNT"] = policy[len("spin"):]
    if policy == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    if policy == "stgraph":
        env["BENCH_STGRAPH_THREADS"] = "1"
    return env


def _run(n: int, policy: str, root: Path, cache: Path, epochs: int) -> list[dict]:
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(root), str(cache), str(epochs)], env=_env(policy),
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(n)]
    out = []
    for p in procs:
        stdout, _ = p.communicate(timeout=3600)
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--policies", nargs="+", default=["default", "passive", "stgraph", "spin1000", "spin100"])
    args = ap.parse_args()
    root = SHARED / "data" / "her2st"
    cache = Path(os.environ.get("STGRAPH_CACHE_DIR", "/tmp/stgraph-contention-cache"))
    _run(1, "default", root, cache, 1)  # fill the feature cache: every timed run reads it
    rows = []
    for policy in args.policies:
        for n in (1, 3):
            t0 = time.perf_counter()
            results = _run(n, policy, root, cache, args.epochs)
            first = results[0]["epoch_seconds"][2:]  # the first epochs warm up
            rows.append({"policy": policy, "processes": n, "median_epoch_s": statistics.median(first),
                         "threads": results[0]["threads"], "wall_s": time.perf_counter() - t0,
                         "epoch_seconds": results[0]["epoch_seconds"]})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "epoch_seconds"}), flush=True)
    summary = {}
    for policy in args.policies:
        alone = next(r for r in rows if r["policy"] == policy and r["processes"] == 1)["median_epoch_s"]
        shared = next(r for r in rows if r["policy"] == policy and r["processes"] == 3)["median_epoch_s"]
        summary[policy] = {"alone_s": alone, "beside_two_s": shared, "slowdown": shared / alone}
    print(json.dumps(summary, indent=1))
    write_results("contention", {"epochs": args.epochs, "rows": rows, "summary": summary,
                                 "workload": "configs/cpu/bleep.yaml on cached features of HER2+ B4 C2 C3 C4 C5"})


if __name__ == "__main__":
    main()
