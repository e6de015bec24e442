"""The learned spatial model (configs/stgraph_graph.yaml) beside the closed-form ridge (configs/stgraph.yaml)
and the RBF kernel ridge baseline, HER2+ LOSO, 785 genes, on one cache of stgraph.yaml's view features.

The features (patch + 2× context + neighbour means, frozen mobilenetv2_100) do not depend on the fold, so
they are computed once per section (and kept in data.cache_dir); each fold then fits in seconds (ridge,
kernel ridge) to minutes (the learned model, CPU). Every (γ, λ) and epoch choice is made by LOSO inside the
fold's training sections. Writes benchmarks/results/learned_her2st[_<tag>].json: per fold, seed and method,
ACG and HEG-50, and the paired differences to the ridge (t-interval over folds of the seed means).

    STGRAPH_SHARED=/path/to/shared python benchmarks/learned_her2st.py [--seeds 3] [--folds loso|patient]
        [--set model.spot_graph.members=3 ...]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, machine, write_results  # noqa: E402

from stgraph.config import load_config  # noqa: E402
from stgraph.data.readers import HER2ST_IMAGED_SECTIONS, read_her2st  # noqa: E402
from stgraph.evaluation import make_folds  # noqa: E402
from stgraph.evaluation.baselines import kernel_ridge  # noqa: E402
from stgraph.evaluation.stats import format_difference, paired_difference, summarize_seeds  # noqa: E402
from stgraph.metrics import evaluate_arrays  # noqa: E402
from stgraph.models import create_image_encoder  # noqa: E402
from stgraph.models.ridge import RidgeRegressor  # noqa: E402
from stgraph.models.spot_graph import SpotGraphRegressor  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    from stgraph.preprocess.prepare import fit_preprocessor, prepare_slide

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--folds", choices=["loso", "patient"], default="loso")
    ap.add_argument("--set", nargs="*", default=[], help="overrides of configs/stgraph_graph.yaml")
    ap.add_argument("--tag", default="")
    ap.add_argument("--only", nargs="*", default=[], help="run only these folds (named by their test section)")
    ap.add_argument("--no-kernel-ridge", action="store_true",
                    help="skip the kernel ridge (seed-independent and the slowest part: ~5 CPU-min per fold)")
    args = ap.parse_args()
    name = "learned_her2st" + ("" if args.folds == "loso" else f"_{args.folds}") + (f"_{args.tag}" if args.tag else "")

    root = SHARED / "data" / "her2st"
    weights = SHARED / "weights" / "mobilenetv2_100.imagenet.pth"
    common = [f"data.genes={root / 'her_hvg_cut_1000.npy'}", f"model.image_encoder.weights={weights}",
              "train.progress=false"]
    graph_cfg = load_config(REPO / "configs" / "stgraph_graph.yaml", common + args.set)
    slides = [read_her2st(root, s) for s in HER2ST_IMAGED_SECTIONS]
    prep, _ = fit_preprocessor(graph_cfg, slides)  # a fixed gene list: the same genes in every fold
    encoder = create_image_encoder(graph_cfg)
    data = {}
    for ad, sid in zip(slides, HER2ST_IMAGED_SECTIONS):
        p = prepare_slide(ad, graph_cfg, prep, image_encoder=encoder, with_graph=True)
        data[sid] = (p.features, prep.expression(ad), p.edge_index.numpy())
    sg = graph_cfg.model.spot_graph
    rows = []
    t0 = time.perf_counter()
    for fold in make_folds(list(HER2ST_IMAGED_SECTIONS), scheme=args.folds):
        if args.only and fold.name not in args.only:
            continue
        train, test = fold.train_ids, fold.test_ids[0]
        x = np.concatenate([data[s][0] for s in train])
        y = np.concatenate([data[s][1] for s in train])
        ids = np.concatenate([[s] * len(data[s][0]) for s in train])
        xq, yq, eq = data[test]
        genes = list(prep.genes)

        rc = graph_cfg.model.ridge  # stgraph.yaml's ridge: reduced rank, (λ, rank) by LOSO over the training slides
        ridge = RidgeRegressor(alpha=rc.alpha, n_components=rc.n_components, center_targets=rc.center_targets,
                               gene_rank=rc.gene_rank, alphas=rc.alpha_grid, gene_ranks=rc.gene_rank_grid).fit(x, y, ids)
        preds = {"stgraph (ridge)": ridge(torch.as_tensor(xq)).numpy(),
                 # The ridge of earlier releases (full rank, λ = 3e4): the bar the learned targets were set against.
                 "ridge, full rank (λ = 3e4)": RidgeRegressor(alpha=3e4, n_components=rc.n_components)
                 .fit(x, y, ids)(torch.as_tensor(xq)).numpy()}
        if not args.no_kernel_ridge:
            preds["baseline:kernel_ridge"] = kernel_ridge(x, y, xq, ids)
        for method, pred in preds.items():
            extra = ridge.chosen if method == "stgraph (ridge)" else {}
            rows.append({"method": method, "fold": fold.name, "seed": 0, **extra, **evaluate_arrays(pred, yq, genes)})
        for seed in range(args.seeds):
            model = SpotGraphRegressor(
                n_components=sg.n_components, base=sg.base, alpha=sg.alpha, hidden=sg.hidden, rank=sg.rank,
                members=sg.members, dropout=sg.dropout, neighbours=sg.neighbours, epochs=sg.epochs, lr=sg.lr,
                weight_decay=sg.weight_decay, feature_noise=sg.feature_noise, feature_dropout=sg.feature_dropout,
                pearson_weight=sg.pearson_weight, center_targets=sg.center_targets,
                select_epochs=sg.select_epochs, gene_rank=sg.gene_rank,
                alpha_grid=sg.alpha_grid, gene_rank_grid=sg.gene_rank_grid,
                seed=graph_cfg.train.seed + seed).fit([(*data[s], s) for s in train])
            pred = model.predict(xq, eq)
            rows.append({"method": "stgraph_graph", "fold": fold.name, "seed": seed,
                         "epochs": model.chosen_epochs, **evaluate_arrays(pred, yq, genes)})
        print(fold.name, f"{(time.perf_counter() - t0) / 60:.1f} min", flush=True)
        # Written after every fold: a run stopped early (a shared machine) keeps the folds it finished.
        write_results(name, {"folds": args.folds, "seeds": args.seeds, "overrides": args.set, "only": args.only,
                             "rows": rows, "complete": False, "seconds": time.perf_counter() - t0})
    frame = pd.DataFrame(rows)
    summary = summarize_seeds(frame, ["pcc_acg", "pcc_heg50"])
    pairs = [("stgraph_graph", "stgraph (ridge)"), ("stgraph_graph", "ridge, full rank (λ = 3e4)"),
             ("stgraph (ridge)", "ridge, full rank (λ = 3e4)")]
    diffs = {f"{a} − {b}, {m}": paired_difference(frame, a, b, m) for a, b in pairs for m in ("pcc_acg", "pcc_heg50")}
    print(summary.to_string())
    for k, d in diffs.items():
        print(f"{k}: {format_difference(d)}")
    write_results(name, {"folds": args.folds, "seeds": args.seeds, "overrides": args.set, "only": args.only,
                         "rows": frame.to_dict(orient="records"), "differences": diffs, "complete": True,
                         "seconds": time.perf_counter() - t0, "machine": machine()})


if __name__ == "__main__":
    main()
