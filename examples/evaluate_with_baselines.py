"""Leave-one-slide-out evaluation of two methods next to the baselines (untrained retrieval, ridge, mean
profile), with the per-fold table, summary and figures written to --out.

    python examples/evaluate_with_baselines.py          # cpu/bleep and cpu/mclstexp, three folds
    python examples/evaluate_with_baselines.py --tiny   # smoke test
"""
from pathlib import Path

from _common import CONFIGS, parser, run, tiny_overrides

from stgraph.config import load_config
from stgraph.data import SlideCollection, make_synthetic_collection
from stgraph.evaluation import cross_validate, make_folds


def main(argv=None):
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    out = Path(args.out) / "evaluate"
    collection = SlideCollection(make_synthetic_collection(n_slides=3, n_rows=10, n_cols=10, n_genes=40, spacing=32))
    base = (tiny_overrides(out / "cache") if args.tiny else []) + ["data.genes=shared", "data.harmony=false"]
    methods = ("bleep",) if args.tiny else ("bleep", "mclstexp")
    configs = {name: load_config(CONFIGS / "cpu" / f"{name}.yaml", base) for name in methods}
    folds = make_folds(collection.ids)[:1] if args.tiny else make_folds(collection.ids)
    frame = cross_validate(configs, collection, folds, out_dir=out, baselines=True, progress=not args.tiny)
    print(frame[["method", "fold", "pcc_acg", "rmse"]].to_string(index=False))
    return frame


if __name__ == "__main__":
    run(main)
