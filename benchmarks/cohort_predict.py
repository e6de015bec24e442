"""Predict a cohort of synthetic whole slides with the command users run: slides per hour, memory, reuse.

Usage::

    python benchmarks/cohort_predict.py [--slides 40] [--size 8000] [--patch 112] [--workdir DIR]
        # → benchmarks/results/cohort_predict.json

1. write ``--slides`` synthetic ``--size`` px pyramidal TIFFs at 0.5 µm/px (:func:`write_synthetic_wsi`, each
   its own seed) and a sheet ``cohort.csv``;
2. train two runs of ``stgraph.yaml`` (the closed-form ridge) with a ``test_resnet`` backbone (random weights,
   frozen), ``--patch`` px patches at 1 µm/px: model A and model B (another gene set, the same backbone);
3. ``stgraph predict --model A --wsi-sheet cohort.csv --out DIR --cache`` in one process (cold: it computes the
   features and stores them), then ``torchrun --nproc-per-node 2 -m stgraph.cli predict ...`` (its own empty
   cache, so also cold), then ``stgraph predict --model B ... --cache`` (warm: B reuses A's stored features);
4. each run's wall time, slides per hour, spots per second and peak RSS per process (from ``manifest.csv``).

Every command runs as a child process, as a user runs it; the machine description and load go into the result.
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402


def _train(out: Path, patch: int, n_hvg: int) -> None:
    from stgraph.config import load_config
    from stgraph.data.synthetic import make_synthetic_collection
    from stgraph.training import train_model

    slides = make_synthetic_collection(n_slides=3, n_rows=10, n_cols=10, n_genes=60, spacing=patch)
    for s in slides:
        for entry in s.uns["spatial"].values():
            entry["metadata"] = dict(entry.get("metadata", {}), microns_per_pixel=1.0)
    overrides = ["model.image_encoder.backbone=test_resnet", "model.image_encoder.pretrained=false",
                 "model.image_encoder.weights=null", f"model.image_encoder.input_size={patch}",
                 "model.image_encoder.model_kwargs={}", f"data.patch_size={patch}", f"data.n_top_hvg={n_hvg}",
                 "data.n_top_expressed=0", "data.include_genes=null", "data.harmony=false", "data.cache_dir=null",
                 "train.progress=false", "train.device=cpu", "train.seed=0"]
    train_model(load_config(REPO / "configs" / "stgraph.yaml", overrides), slides, out=out)


def _manifest(out: Path) -> list[dict]:
    with open(out / "manifest.csv") as fh:
        return list(csv.DictReader(fh))


def _run(cmd: list[str], env: dict, label: str) -> dict:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{label} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    print(f"{label}: {seconds:.1f} s — {done.stdout.strip().splitlines()[-1]}", flush=True)
    return {"seconds": seconds, "cached_slides": done.stderr.count("features from the cache")}


def _summary(out: Path, run: dict) -> dict:
    rows = _manifest(out)
    done = [r for r in rows if r["status"] == "done"]
    spots = sum(int(r["spots"]) for r in done)
    per_rank: dict[str, float] = {}
    for r in done:
        per_rank[r["rank"]] = max(per_rank.get(r["rank"], 0.0), float(r["peak_rss_mib"]))
    return {**run, "slides": len(done), "failed": len(rows) - len(done), "spots": spots,
            "slides_per_hour": len(done) / run["seconds"] * 3600, "spots_per_s": spots / run["seconds"],
            "median_slide_seconds": sorted(float(r["seconds"]) for r in done)[len(done) // 2],
            "peak_rss_mib_per_process": per_rank}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slides", type=int, default=40)
    ap.add_argument("--size", type=int, default=8000, help="slide side in px (0.5 µm/px)")
    ap.add_argument("--patch", type=int, default=112, help="patch side in µm (px at the run's 1 µm/px)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default="cohort_predict")
    args = ap.parse_args(argv)

    from stgraph.data.wsi_synthetic import write_synthetic_wsi

    work = Path(tempfile.mkdtemp(prefix="cohort_predict_", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        rows = []
        for i in range(args.slides):
            path = work / "slides" / f"slide{i:03d}.tif"
            path.parent.mkdir(exist_ok=True)
            write_synthetic_wsi(path, size=args.size, mpp=0.5, seed=i, compression="zlib", compression_level=1)
            rows.append(f"slide{i:03d},{path}\n")
        sheet = work / "cohort.csv"
        sheet.write_text("slide_id,path\n" + "".join(rows))
        write_s = time.perf_counter() - t0
        _train(work / "runA", args.patch, 40)
        _train(work / "runB", args.patch, 30)
        env = {**os.environ, "STGRAPH_CACHE_DIR": str(work / "cache"), "PYTHONPATH": str(REPO)}
        cli = [sys.executable, "-m", "stgraph.cli", "predict", "--wsi-sheet", str(sheet), "--grid", "visium"]
        one = _summary(work / "one", _run([*cli, "--model", str(work / "runA"), "--out", str(work / "one"),
                                           "--cache"], env, "A, 1 process, cold"))
        env2 = {**env, "STGRAPH_CACHE_DIR": str(work / "cache2"), "OMP_NUM_THREADS": "1"}
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
                  "stgraph.cli", *cli[3:]]
        two = _summary(work / "two", _run([*launch, "--model", str(work / "runA"), "--out", str(work / "two"),
                                           "--cache"], env2, "A, 2 processes, cold"))
        warm = _summary(work / "warm", _run([*cli, "--model", str(work / "runB"), "--out", str(work / "warm"),
                                             "--cache"], env, "B, 1 process, A's stored features"))
        result = {"slides": args.slides, "size_px": args.size, "slide_mpp": 0.5, "patch_um": args.patch,
                  "backbone": "test_resnet (random, frozen)", "config": "stgraph.yaml (patch + 2x context)",
                  "grid": "visium", "write_slides_s": write_s, "one_process": one, "two_processes": two,
                  "second_model_reusing_features": warm,
                  "speedup_two_processes": one["seconds"] / two["seconds"],
                  "speedup_reused_features": one["seconds"] / warm["seconds"]}
        print(f"1 process {one['slides_per_hour']:.0f} slides/h, 2 processes {two['slides_per_hour']:.0f} slides/h "
              f"(×{result['speedup_two_processes']:.2f}), second model on stored features "
              f"{warm['slides_per_hour']:.0f} slides/h (×{result['speedup_reused_features']:.2f})")
        write_results(args.out, result)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
