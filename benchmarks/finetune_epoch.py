"""Epoch time of last-stage fine-tuning: ST-GCHB with and without cached stage inputs, beside BLEEP.

ST-GCHB takes one slide's whole graph per step and its losses over ``batch_size`` spots of it, so without
the cache every step pushes all the slide's patches through the backbone again. With
``model.image_encoder.cache_stage_input`` the frozen stages run once per slide (before the first epoch)
and each step runs only the trainable last stage. Same backbone (mobilenetv2_100, ImageNet weights from
the local file), same freeze policy (last stage trainable), same data, same batch size; the first epoch is
timed (preparation — patch extraction and the stage-input cache — is excluded and reported apart).

    python benchmarks/finetune_epoch.py [--sections C2 C3] [--batch-size 32] [--device cpu]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, machine, write_results  # noqa: E402

from stgraph.config import load_config  # noqa: E402
from stgraph.data.readers import read_her2st  # noqa: E402
from stgraph.training import train_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CASES = {
    "bleep (last stage fine-tuned)": ("bleep.yaml", []),
    "stgchb (uncached)": ("stgchb.yaml", []),
    "stgchb_fast (cached stage input)": ("stgchb_fast.yaml", []),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sections", nargs="+", default=["C2"])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    root = SHARED / "data" / "her2st"
    slides = [read_her2st(root, s) for s in args.sections]
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for name, (path, extra) in CASES.items():
            cfg = load_config(REPO / "configs" / path, extra + [
                f"data.genes={root / 'her_hvg_cut_1000.npy'}", "data.harmony=false", "train.epochs=1",
                f"train.batch_size={args.batch_size}", "train.val_fraction=0", "train.progress=false",
                f"train.device={args.device}", "model.image_encoder.backbone=mobilenetv2_100",
                f"model.image_encoder.weights={SHARED / 'weights' / 'mobilenetv2_100.imagenet.pth'}",
                "model.image_encoder.freeze=all_but_last_stage", f"data.cache_dir={cache}"])
            t0 = time.perf_counter()
            run = train_model(cfg, slides)
            total = time.perf_counter() - t0
            epoch = float(run.result.history.query("split == 'train'")["seconds"].iloc[0])
            rows.append({"case": name, "epoch_seconds": round(epoch, 2),
                         "preparation_seconds": round(total - epoch, 2)})
            print(f"{name:36s} epoch {epoch:7.2f} s   preparation {total - epoch:6.2f} s", flush=True)
    bleep = rows[0]["epoch_seconds"]
    for r in rows:
        r["x_bleep"] = round(r["epoch_seconds"] / bleep, 2)
    print({r["case"]: r["x_bleep"] for r in rows})
    write_results("finetune_epoch", {"sections": args.sections, "n_spots": sum(s.n_obs for s in slides),
                                     "batch_size": args.batch_size, "device": args.device, "rows": rows,
                                     "machine": machine()})


if __name__ == "__main__":
    main()
