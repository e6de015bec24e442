"""Whole-slide prediction end to end on a synthetic slide: peak memory and throughput against the backbone.

Usage::

    python benchmarks/wsi_predict.py [--size 40000] [--mpp 0.5] [--grid visium] [--backbone test_resnet]
                                     [--patch 112] [--chunk 256] [--batch 64] [--prefetch 1]
                                     [--workdir DIR] [--out NAME]   # → benchmarks/results/NAME.json, default wsi_predict_<size>

1. write a ``size`` × ``size`` px pyramidal TIFF at ``mpp`` µm/px (:func:`write_synthetic_wsi`);
2. train a tiny run (``--backbone``, random weights, frozen features) on synthetic slides at 1 µm/px with
   ``--patch`` px patches (so ``patch`` µm patches at 1 µm/px);
3. time the backbone's raw forward rate on random (batch, 3, patch, patch) batches (patches/s);
4. :func:`stgraph.inference.wsi.predict_wsi` on the slide (``--grid``, no cache), timed, with the process's
   peak RSS (``ru_maxrss``) after each step. The end-to-end rate counts everything predict_wsi does: tissue
   detection, the grid, reading and resampling patches, the backbone, the kNN retrieval and the AnnData.

Target (issue 10): ~1e5 spots on the 40 000 px slide with peak RSS < 4 GiB and an end-to-end rate ≥ 0.8×
the raw forward rate. At 0.5 µm/px a 40 000 px slide is 20 mm wide and holds only ~1.8e4 Visium spots;
``--mpp 1`` (40 mm) gives ~1e5. Run small first (``--size 8000``).
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
    parser.add_argument("--chunk", type=int, default=256, help="patches read per chunk")
    parser.add_argument("--batch", type=int, default=64, help="patches per backbone forward")
    parser.add_argument("--prefetch", type=int, default=1, help="chunks read ahead in a thread (0: none)")
    parser.add_argument("--mpp", type=float, default=0.5, help="µm per level-0 pixel of the synthetic slide")
    parser.add_argument("--grid", default="visium", help="visium, st or a pitch in µm")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's); the raw rate is measured with the same")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    name = args.out or f"wsi_predict_{args.size}"

    import numpy as np
    import torch

    from stgraph.config import load_config
    from stgraph.data.synthetic import make_synthetic_collection
    from stgraph.data.wsi_synthetic import write_synthetic_wsi
    from stgraph.data.transforms import normalize_batch, patch_batch
    import stgraph.inference.wsi as inference_wsi
    from stgraph.training import train_model

    rss = {"after_imports_mib": peak_rss_mb()}
    timings = {}
    folder = Path(tempfile.mkdtemp(prefix="wsi_predict_", dir=args.workdir))
    path = folder / f"synthetic_{args.size}.tif"
    t0 = time.perf_counter()
    write_synthetic_wsi(path, size=args.size, mpp=args.mpp, compression="zlib", compression_level=1)
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

    if args.threads:
        torch.set_num_threads(args.threads)
    encoder = run.model.image_encoder.eval()
    fake = np.random.default_rng(0).integers(0, 255, (args.batch, args.patch, args.patch, 3), dtype=np.uint8)

    @torch.no_grad()
    def raw_forward_rate(seconds: float = 5.0) -> float:
        encoder(normalize_batch(patch_batch(fake, args.patch, "cpu")))  # warm-up
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            encoder(normalize_batch(patch_batch(fake, args.patch, "cpu")))
            n += len(fake)
        return n / (time.perf_counter() - t0)

    # measured before and after the prediction: on a shared machine the rate moves with the other jobs
    raw_before = raw_forward_rate()
    rss["after_train_mib"] = peak_rss_mb()

    t0 = time.perf_counter()
    pred = inference_wsi.predict_wsi(run, path, grid=args.grid, chunk_size=args.chunk, batch_size=args.batch,
                       prefetch_chunks=args.prefetch, progress=False)
    timings["predict_s"] = time.perf_counter() - t0
    rss["after_predict_mib"] = peak_rss_mb()
    raw_after = raw_forward_rate()
    raw_rate = (raw_before + raw_after) / 2
    rate = pred.n_obs / timings["predict_s"]
    result = {"size_px": args.size, "n_spots": int(pred.n_obs), "n_genes": int(pred.n_vars),
              "slide_mpp": args.mpp, "grid": args.grid, "backbone": args.backbone, "patch_px": args.patch,
              "chunk": args.chunk, "batch": args.batch, "prefetch": args.prefetch,
              "resample_factor": pred.uns["stgraph"]["resample_factor"], "level": pred.uns["stgraph"]["level"],
              "torch_threads": torch.get_num_threads(), "timings": timings, "peak_rss_mib": rss,
              "raw_forward_patches_per_s": raw_rate,
              "raw_forward_patches_per_s_before_after": [raw_before, raw_after],
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
