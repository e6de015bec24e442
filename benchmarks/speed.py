"""Speed and memory: frozen feature extraction against the backbone's raw forward rate, and the training
epoch time of each method's CPU config on five HER2+ sections.

    python benchmarks/speed.py [--section B4] [--epochs 3]

Prints a table and writes benchmarks/results/speed.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, peak_rss_mb, write_results  # noqa: E402

from stgraph.config import load_config  # noqa: E402
from stgraph.data.patches import extract_patches  # noqa: E402
from stgraph.data.readers import read_her2st  # noqa: E402
from stgraph.models import create_image_encoder, create_model  # noqa: E402
from stgraph.training import Trainer, compute_image_features, fit_preprocessor, prepare_slide  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ROOT = SHARED / "data" / "her2st"


def feature_extraction(section: str) -> dict:
    cfg = load_config(REPO / "configs" / "cpu" / "bleep.yaml")
    adata = read_her2st(ROOT, section)
    patches = extract_patches(adata, size=224)
    encoder = create_image_encoder(cfg).eval()
    compute_image_features(encoder, patches[:16])  # warm-up
    t0 = time.perf_counter()
    compute_image_features(encoder, patches, batch_size=64)
    t_pipeline = time.perf_counter() - t0
    x = torch.randn(64, 3, 224, 224)
    with torch.no_grad():
        encoder(x[:8])
        t0 = time.perf_counter()
        n = 0
        while n < len(patches):
            encoder(x)
            n += len(x)
        t_raw = time.perf_counter() - t0
    return {"section": section, "n_patches": len(patches), "backbone": cfg.model.image_encoder.backbone,
            "pipeline_patches_per_s": len(patches) / t_pipeline, "raw_forward_patches_per_s": n / t_raw,
            "efficiency": (len(patches) / t_pipeline) / (n / t_raw)}


def epoch_times(epochs: int) -> list[dict]:
    sections = ["B4", "C2", "C3", "C4", "C5"]
    slides = [read_her2st(ROOT, s) for s in sections]
    rows = []
    for method in ("bleep", "heclip", "mclstexp", "stgchb"):
        cfg = load_config(REPO / "configs" / "cpu" / f"{method}.yaml",
                          [f"train.epochs={epochs}", "train.progress=false", "train.val_fraction=0",
                           f"data.genes={ROOT / 'her_hvg_cut_1000.npy'}"])
        prep, expr = fit_preprocessor(cfg, slides)
        model = create_model(cfg, prep.spot_in_dim)
        prepared = [prepare_slide(ad, cfg, prep, expr=expr[s], image_encoder=model.image_encoder)
                    for ad, s in zip(slides, sections)]
        result = Trainer(model, cfg, prepared).fit()
        secs = result.history.query("split == 'train'")["seconds"].to_numpy()
        rows.append({"method": method, "n_spots": int(sum(p.n_spots for p in prepared)),
                     "epoch_seconds_median": float(np.median(secs)), "epochs": epochs})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--section", default="B4")
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    fe = feature_extraction(args.section)
    print(f"feature extraction ({fe['backbone']}, {fe['n_patches']} patches of {fe['section']}): "
          f"{fe['pipeline_patches_per_s']:.1f} patches/s through stgraph vs "
          f"{fe['raw_forward_patches_per_s']:.1f} patches/s raw forward ({100 * fe['efficiency']:.0f}%)")
    epochs = epoch_times(args.epochs)
    print("\n| method | spots | s / epoch (cached features) |\n| --- | --- | --- |")
    for r in epochs:
        print(f"| {r['method']} | {r['n_spots']} | {r['epoch_seconds_median']:.2f} |")
    peak = peak_rss_mb()
    print(f"\npeak RSS: {peak:.0f} MiB")
    print("wrote", write_results("speed", {"feature_extraction": fe, "training_epochs": epochs,
                                           "peak_rss_mib": peak}))


if __name__ == "__main__":
    main()
