"""Accuracy on the six imaged HER2+ sections, leave-one-section-out.

All four methods (CPU configs: frozen ImageNet mobilenetv2_100 features), the ST-GCHB ablations and the
baselines, on the 785-gene list of Hist2ST/mclSTExp and on a training-only HVG union. Prints the summary
table and writes benchmarks/results/accuracy_her2st_<genes>/ (results.csv, summary.md, plots).

    python benchmarks/accuracy_her2st.py [--genes list785|hvg|both] [--epochs N] [--folds loso|patient]
                                         [--seeds N] [--methods NAME...] [--baselines NAME...]
                                         [--compare A=B ...] [--tag TAG]

Every row goes through the product's own path (``stgraph.evaluation.cross_validate``: train a run folder,
load it, predict the held-out section, write the .h5ad, score the written file against the section's
counts), so a row is what ``stgraph train`` + ``stgraph predict`` give.

With ``--seeds N`` every method is trained N times per fold (``train.seed`` + 0..N-1): the tables give the
mean ± sd over folds of each fold's seed mean, and each ablation row (``stgraph-no_context_crop`` is an
ablation of ``stgraph``: the name up to a ``-`` or ``+``) its paired difference to the full model with a
95 % t-interval over folds of the seed-mean differences ("no effect detected" when it covers 0).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, SHARED, machine, write_results  # noqa: E402

from stgraph.config import load_config  # noqa: E402
from stgraph.data import SlideCollection  # noqa: E402
from stgraph.data.readers import HER2ST_IMAGED_SECTIONS, read_her2st  # noqa: E402
from stgraph.evaluation import cross_validate, make_folds  # noqa: E402
from stgraph.evaluation.stats import ablation_pairs_by_name  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
METHODS = {
    "bleep": ("cpu/bleep.yaml", []),
    "heclip": ("cpu/heclip.yaml", []),
    "mclstexp": ("cpu/mclstexp.yaml", []),
    "stgchb": ("cpu/stgchb.yaml", []),
    "stgchb-no_nHSIC": ("cpu/stgchb.yaml", ["model.hsic.enabled=false"]),
    "stgchb-no_image_DGI": ("cpu/stgchb.yaml", ["model.image_dgi.enabled=false"]),
    "stgchb-no_gene_DGI": ("cpu/stgchb.yaml", ["model.spot_dgi.enabled=false"]),
    "stgchb-no_PCA": ("cpu/stgchb.yaml", ["model.spot_input=expression"]),
    "stgchb-no_grad_clip": ("cpu/stgchb.yaml", ["train.grad_clip=null"]),
    "stgchb+smoothing": ("cpu/stgchb.yaml", ["inference.smoothing=0.25"]),
    "stgraph": ("stgraph.yaml", []),
    "stgraph-no_context_crop": ("stgraph.yaml", ["model.image_encoder.context_scale=null"]),
    "stgraph-no_neighbours": ("stgraph.yaml", ["model.image_encoder.neighbour_context=false"]),
    "stgraph-no_centering": ("stgraph.yaml", ["model.ridge.center_targets=false"]),
    "stgraph-full_rank": ("stgraph.yaml", ["model.ridge.gene_rank_grid=[0]"]),
    "stgraph-previous_ridge": ("stgraph.yaml", ["model.ridge.alpha=3e4", "model.ridge.gene_rank=0",
                                                "model.ridge.alpha_grid=[]", "model.ridge.gene_rank_grid=[]"]),
    "stgraph+smoothing": ("stgraph.yaml", ["inference.smoothing=0.25"]),
    "stgraph_graph": ("stgraph_graph.yaml", []),
    "stgraph_graph-no_residual": ("stgraph_graph.yaml", ["model.spot_graph.base=none"]),
    "stgraph_graph-full_head": ("stgraph_graph.yaml", ["model.spot_graph.rank=0"]),
    "stgraph_graph-mean_neighbours": ("stgraph_graph.yaml", ["model.spot_graph.neighbours=mean"]),
    "stgraph_graph-no_neighbours": ("stgraph_graph.yaml", ["model.spot_graph.neighbours=none"]),
    "stgraph_graph-no_augment": ("stgraph_graph.yaml", ["model.spot_graph.feature_noise=0",
                                                        "model.spot_graph.feature_dropout=0"]),
    "stgraph_graph-one_member": ("stgraph_graph.yaml", ["model.spot_graph.members=1"]),
    "stgraph_graph+pearson": ("stgraph_graph.yaml", ["model.spot_graph.pearson_weight=1.0"]),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--genes", choices=["list785", "hvg", "both"], default="both")
    ap.add_argument("--epochs", type=int, default=None, help="override train.epochs of every config")
    ap.add_argument("--folds", choices=["loso", "patient"], default="loso")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--seeds", type=int, default=1, help="training seeds per method and fold")
    ap.add_argument("--no-baselines", action="store_true", help="skip the baselines")
    ap.add_argument("--baselines", nargs="+", default=None, metavar="NAME",
                    help="only these baselines (default: every registered one; kernel_ridge is the slowest)")
    ap.add_argument("--compare", nargs="+", default=[], metavar="A=B",
                    help="also give method A's paired difference to method B (besides the ablations by name)")
    ap.add_argument("--tag", default="", help="suffix of the results folder (keeps other runs' results)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    root = SHARED / "data" / "her2st"
    if not root.exists():
        raise SystemExit(f"HER2+ data not found at {root}")
    collection = SlideCollection([read_her2st(root, s) for s in HER2ST_IMAGED_SECTIONS])
    folds = make_folds(collection.ids, scheme=args.folds)
    gene_specs = {"list785": str(root / "her_hvg_cut_1000.npy"), "hvg": "hvg_union"}
    chosen = list(gene_specs) if args.genes == "both" else [args.genes]
    for genes in chosen:
        # Every method is scored on exactly this gene set: no extra expressed genes or named markers.
        extra = [f"data.genes={gene_specs[genes]}", "data.n_top_hvg=1000", "data.n_top_expressed=0",
                 "data.include_genes=null", "train.progress=false"]
        if args.epochs is not None:
            extra.append(f"train.epochs={args.epochs}")
        configs = {}
        for name in args.methods:
            path, overrides = METHODS[name]
            cfg = load_config(REPO / "configs" / path, overrides + extra + args.overrides)
            cfg.name = name
            configs[name] = cfg
        out = RESULTS / (f"accuracy_her2st_{genes}" + ("" if args.folds == "loso" else f"_{args.folds}")
                         + (f"_{args.tag}" if args.tag else ""))
        t0 = time.perf_counter()
        pairs = ablation_pairs_by_name(list(configs))
        for pair in args.compare:
            a, _, b = pair.partition("=")
            pairs[a] = b
        cross_validate(configs, collection, folds, out_dir=out, seeds=args.seeds,
                       baselines=False if args.no_baselines else (args.baselines or True), ablations=pairs,
                       baseline_config=configs.get("stgraph"))
        seconds = time.perf_counter() - t0
        print(f"\n## HER2+ {args.folds}, genes = {genes} ({seconds / 60:.1f} min)\n")
        print((out / "summary.md").read_text())
        write_results(out.name, {"genes": genes, "folds": args.folds, "seconds": seconds,
                                                    "methods": list(configs), "seeds": args.seeds,
                                    "results_dir": str(out.name)})
    print(machine())


if __name__ == "__main__":
    main()
