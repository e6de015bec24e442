"""How far to trust stgraph's predictions on HER2+, leave-one-section-out: the trust itself, measured.

Three parts, each through the product's own path (train a run folder, predict, score the written file):

1. **calibration** (``cross_validate`` with the trust columns): per method and fold, Spearman between the
   expected per-gene r (the run's, and adjusted to the slide) and the realised r; the genes flagged reliable,
   their mean realised r and the share above 0.1; coverage of the 80/90/95 % conformal intervals and their
   width over the training values' central interval; the share of held-out spots flagged out of distribution.
   Written to ``benchmarks/results/trust_her2st_<genes>/`` (results.csv, summary.md).
2. **out of distribution**: each fold's held-out section predicted again from shifted images (a moderate stain
   change, a strong one (hue rotated by 90°), blur, colour inversion, a non-tissue image); AUROC of the OOD score
   for the shifted spots against the section's own spots, the share flagged, and whether the slide is named in
   a warning. ``trust_her2st_ood.json``.
3. **cost**: training and prediction time of stgraph.yaml with and without the trust record, one fold.
   ``trust_her2st_cost.json``.

    python benchmarks/trust_her2st.py [--part calibration ood cost] [--genes list785 shipped]
        [--methods stgraph stgraph_graph bleep]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, SHARED, machine, write_results  # noqa: E402

from stgraph.config import load_config  # noqa: E402
from stgraph.data import SlideCollection  # noqa: E402
from stgraph.data.readers import HER2ST_IMAGED_SECTIONS, read_her2st  # noqa: E402
from stgraph.evaluation import cross_validate, make_folds  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
METHODS = {"stgraph": "stgraph.yaml", "stgraph_graph": "stgraph_graph.yaml", "bleep": "cpu/bleep.yaml"}


def _gene_overrides(root: Path, genes: str) -> list[str]:
    if genes == "list785":
        return [f"data.genes={root / 'her_hvg_cut_1000.npy'}", "data.n_top_expressed=0", "data.include_genes=null"]
    return []  # the shipped gene set of each config


def calibration(collection, root, genes: str, methods) -> None:
    configs = {}
    for name in methods:
        cfg = load_config(REPO / "configs" / METHODS[name], _gene_overrides(root, genes) + [
            "train.progress=false", "trust.reliability=true"])
        cfg.name = name
        configs[name] = cfg
    out = RESULTS / f"trust_her2st_{genes}"
    t0 = time.perf_counter()
    cross_validate(configs, collection, make_folds(collection.ids), out_dir=out, baselines=False)
    print((out / "summary.md").read_text())
    write_results(out.name, {"part": "calibration", "genes": genes, "methods": list(configs),
                             "seconds": time.perf_counter() - t0, "results_dir": out.name})


# ------------------------------------------------------------------------------------------- image shifts
def _shifts(image: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Shifted versions of an RGB H&E image (uint8 (H, W, 3))."""
    from PIL import Image, ImageFilter

    img = Image.fromarray(image)
    a = image.astype(np.float32)
    moderate = np.clip(255 * ((a * np.array([1.0, 0.75, 1.15])) / 255) ** 1.4, 0, 255).astype(np.uint8)
    hsv = np.asarray(img.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(int) + 64) % 256  # hue rotated by 90°
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    noise = (rng.random((h // 8 + 1, w // 8 + 1, 3)) * 255).astype(np.uint8)
    return {"stain_moderate": moderate,
            "stain_strong": np.asarray(Image.fromarray(hsv, "HSV").convert("RGB")),
            "blur": np.asarray(img.filter(ImageFilter.GaussianBlur(6))),
            "inverted": 255 - image,
            "non_tissue": np.asarray(Image.fromarray(noise).resize((w, h)))}


def _with_image(adata, image: np.ndarray):
    from stgraph.keys import Key

    out = adata.copy()
    lib = next(iter(out.uns[Key.uns.spatial]))
    entry = out.uns[Key.uns.spatial][lib]
    entry[Key.uns.images] = {Key.image.fullres: image}
    entry[Key.uns.scalefactors] = dict(entry[Key.uns.scalefactors], **{Key.scalefactor.fullres: 1.0})
    entry[Key.uns.metadata] = {k: v for k, v in entry[Key.uns.metadata].items()
                               if k != Key.metadata.source_image_path}
    return out


def ood(collection, root, genes: str) -> None:
    from PIL import Image
    from sklearn.metrics import roc_auc_score

    from stgraph.inference import predict_slide
    from stgraph.keys import Key
    from stgraph.training import train_model

    rows, t0 = [], time.perf_counter()
    for fold in make_folds(collection.ids):
        cfg = load_config(REPO / "configs" / "stgraph.yaml", _gene_overrides(root, genes) + ["train.progress=false"])
        run = train_model(cfg, [collection[i] for i in fold.train_ids])
        test = collection[fold.test_ids[0]]
        base = predict_slide(run, test)
        path = next(iter(test.uns[Key.uns.spatial].values()))[Key.uns.metadata][Key.metadata.source_image_path]
        image = np.asarray(Image.open(path).convert("RGB"))
        row = {"fold": fold.name, "false_alarm": float(1 - base.obs[Key.obs.in_distribution].mean()),
               "slide_warning": bool(base.uns["stgraph"]["ood_warning"]),
               "median_score": float(np.median(base.obs[Key.obs.ood_score]))}
        for name, shifted in _shifts(image).items():
            pred = predict_slide(run, _with_image(test, shifted))
            s = pred.obs[Key.obs.ood_score].to_numpy()
            y = np.r_[np.zeros(base.n_obs), np.ones(pred.n_obs)]
            row[f"{name}_auroc"] = float(roc_auc_score(y, np.r_[base.obs[Key.obs.ood_score].to_numpy(), s]))
            row[f"{name}_flagged"] = float(1 - pred.obs[Key.obs.in_distribution].mean())
            row[f"{name}_warning"] = bool(pred.uns["stgraph"]["ood_warning"])
        rows.append(row)
        print(row, flush=True)
        write_results("trust_her2st_ood", {"part": "ood", "genes": genes, "rows": rows, "complete": False,
                                            "seconds": time.perf_counter() - t0})
    write_results("trust_her2st_ood", {"part": "ood", "genes": genes, "rows": rows, "complete": True,
                                        "seconds": time.perf_counter() - t0})


def cost(collection, root, genes: str, methods) -> None:
    """Training and prediction on the C6 fold, with and without the trust record: stgraph.yaml (which reuses its
    nested choice's out-of-slide predictions) three times each, a Trainer model (BLEEP: K more trainings) once."""
    import statistics

    from stgraph.inference import predict_slide
    from stgraph.training import train_model

    fold = next(f for f in make_folds(collection.ids) if f.name == "C6")
    train = [collection[i] for i in fold.train_ids]
    test = collection[fold.test_ids[0]]
    result = {}
    for name in methods:
        out = {}
        repeats = 3 if name == "stgraph" else 1
        for trust in (False, True):
            cfg = load_config(REPO / "configs" / METHODS[name], _gene_overrides(root, genes) + [
                "train.progress=false", f"trust.reliability={str(trust).lower()}"])
            if not trust:
                train_model(cfg, train)  # features into the cache first: timed runs read them
            t_train, t_pred = [], []
            for _ in range(repeats):
                t = time.perf_counter()
                run = train_model(cfg, train)
                t_train.append(time.perf_counter() - t)
                t = time.perf_counter()
                predict_slide(run, test, interval=0.9 if trust else None)
                t_pred.append(time.perf_counter() - t)
            out["with_trust" if trust else "without_trust"] = {"train_s": statistics.median(t_train),
                                                               "predict_s": statistics.median(t_pred),
                                                               "train_all": t_train, "predict_all": t_pred}
        out["train_ratio"] = out["with_trust"]["train_s"] / out["without_trust"]["train_s"]
        out["predict_ratio"] = out["with_trust"]["predict_s"] / out["without_trust"]["predict_s"]
        print(name, out, flush=True)
        result[name] = out
    write_results("trust_her2st_cost", {"part": "cost", "genes": genes, "fold": "C6", "training_slides": len(train),
                                        "methods": result})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", nargs="+", default=["calibration", "ood", "cost"], choices=["calibration", "ood", "cost"])
    ap.add_argument("--genes", nargs="+", default=["list785", "shipped"], choices=["list785", "shipped"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = ap.parse_args()
    root = SHARED / "data" / "her2st"
    if not root.exists():
        raise SystemExit(f"HER2+ data not found at {root}")
    collection = SlideCollection([read_her2st(root, s) for s in HER2ST_IMAGED_SECTIONS])
    if "calibration" in args.part:
        for genes in args.genes:
            calibration(collection, root, genes, args.methods if genes == "list785" else ["stgraph"])
    if "ood" in args.part:
        ood(collection, root, "list785")
    if "cost" in args.part:
        cost(collection, root, "list785", [m for m in args.methods if m in ("stgraph", "bleep")])
    print(machine())


if __name__ == "__main__":
    main()
