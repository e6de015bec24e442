"""Whole-slide prediction end to end on a synthetic slide: peak memory and throughput against the backbone.

Usage::

    python benchmarks/wsi_predict.py [--size 40000] [--backbone test_resnet] [--patch 112] [--chunk 256]
                                     [--workdir DIR] [--out benchmarks/results/wsi_predict.json]

1. write a ``size`` × ``size`` px pyramidal TIFF at 0.5 µm/px (:func:`write_synthetic_wsi`);
2. train a tiny run (``--backbone``, random weights, frozen features) on synthetic slides at 1 µm/px with
   ``--patch`` px patches (so ``patch`` µm patches at 1 µm/px);
3. time the backbone's raw forward rate on random (64, 3, patch, patch) batches (patches/s);
4. :func:`stgraph.inference.wsi.predict_wsi` on the slide (Visium grid, level 1 read, no cache), timed, with
   the process's peak RSS (``ru_maxrss``) after each step.

Target (issue 10): ~1e5 spots on the 40 000 px slide with peak RSS < 4 GiB and an end-to-end rate ≥ 0.8×
the raw forward rate. Run small first (``--size 8000``).
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_mb, write_results  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=40_000)
    parser.add_argument("--backbone", default="test_resnet")
    parser.add_argument("--patch", type=int, default=112, help="patch side, px (= µm at the run's 1 µm/px)")
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    name = args.out or ("wsi_predict" if args.size == 40_000 else f"wsi_predict_{args.size}")

    import numpy as np
    import torch

    from stgraph.config import load_config
    from stgraph.data.synthetic import make_synthetic_collection
    from stgraph.data.wsi_synthetic import write_synthetic_wsi
    from stgraph.data.transforms import normalize_batch, patch_batch
    from stgraph.inference.wsi import predict_wsi
    from stgraph.training import train_model

    rss = {"after_imports_mib": peak_rss_mb()}
    timings = {}
    folder = Path(tempfile.mkdtemp(prefix="wsi_predict_", dir=args.workdir))
    path = folder / f"synthetic_{args.size}.tif"
    t0 = time.perf_counter()
    write_synthetic_wsi(path, size=args.size, mpp=0.5, compression="zlib", compression_level=1)
    timings["write_tiff_s"] = time.perf_counter() - t0
    rss["after_write_mib"] = peak_rss_mb()

    slides = make_synthetic_collection(n_slides=2, n_rows=8, n_cols=8, n_genes=40, spacing=48)
    for s in slides:
        for entry in s.uns["spatial"].values():
            entry["metadata"] = dict(entry.get("metadata", {}), microns_per_pixel=1.0)
    overrides = [f"model.image_encoder.backbone={args.backbone}", "model.image_encoder.pretrained=false",
                 "model.image_encoder.weights=null", f"model.image_encoder.input_size={args.patch}",
                 "model.image_encoder.model_kwargs={}", f"data.patch_size={args.patch}", "data.n_top_hvg=20",
                 "data.harmony=false", "data.cache_dir=null", "train.epochs=1", "train.progress=false",
                 "train.device=cpu", "model.embed_dim=16"]
    cfg = load_config(REPO / "configs" / "heclip.yaml", overrides)
    t0 = time.perf_counter()
    run = train_model(cfg, slides)
    timings["train_s"] = time.perf_counter() - t0

    encoder = run.model.image_encoder.eval()
    fake = np.random.default_rng(0).integers(0, 255, (64, args.patch, args.patch, 3), dtype=np.uint8)
    with torch.no_grad():
        encoder(normalize_batch(patch_batch(fake, args.patch, "cpu")))  # warm-up
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < 5.0:
            encoder(normalize_batch(patch_batch(fake, args.patch, "cpu")))
            n += len(fake)
        raw_rate = n / (time.perf_counter() - t0)
    rss["after_train_mib"] = peak_rss_mb()

    t0 = time.perf_counter()
    pred = predict_wsi(run, path, grid="visium", chunk_size=args.chunk, progress=False)
    timings["predict_s"] = time.perf_counter() - t0
    rss["after_predict_mib"] = peak_rss_mb()
    rate = pred.n_obs / timings["predict_s"]
    result = {"size_px": args.size, "n_spots": int(pred.n_obs), "n_genes": int(pred.n_vars),
              "backbone": args.backbone, "patch_px": args.patch, "chunk": args.chunk,
              "resample_factor": pred.uns["stgraph"]["resample_factor"], "level": pred.uns["stgraph"]["level"],
              "timings": timings, "peak_rss_mib": rss, "raw_forward_patches_per_s": raw_rate,
              "end_to_end_spots_per_s": rate, "throughput_ratio": rate / raw_rate}
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    out = write_results(name, result)
    print(f"{pred.n_obs} spots in {timings['predict_s']:.1f} s ({rate:.0f}/s; raw forward {raw_rate:.0f}/s, "
          f"ratio {rate / raw_rate:.2f}); peak RSS {rss['after_predict_mib']:.0f} MiB → {out}")
    return result


if __name__ == "__main__":
    main()
