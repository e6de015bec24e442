"""``stgraph evaluate`` (alias ``benchmark``): cross-validated evaluation of configs with baselines."""
from __future__ import annotations

from pathlib import Path

from .common import check_apart, read_many, slides_parent, with_cli_plugins

__all__ = ["add_parser", "run"]


def add_parser(sub, parents) -> None:
    p = sub.add_parser("evaluate", aliases=["benchmark"],
                       help="cross-validated evaluation of one or more configs with baselines",
                       parents=[*parents, slides_parent()])
    p.add_argument("--config", nargs="+", required=True,
                   help="one or more YAML files or shipped config names (`stgraph configs`)")
    p.add_argument("--folds", choices=["loso", "patient"], default="loso",
                   help="leave-one-section-out, or also drop the test section's patient from training")
    p.add_argument("--only-folds", nargs="+", default=None, metavar="ID", help="run only these test slides")
    p.add_argument("--markers", nargs="+", default=None, metavar="GENE", help="marker genes (MG)")
    p.add_argument("--no-baselines", action="store_true", help="skip the baselines")
    p.add_argument("--keep-runs", action="store_true", help="keep each fold's run folder under <out>/runs")
    p.add_argument("--out", required=True, help="results folder")
    p.add_argument("--force", action="store_true", help="replace the results already in --out")
    p.add_argument("--device", default=None,
                   help="torch device for every fold (train.device; default: each config's)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="folds evaluated at once, one process each (cores split between them; a GPU each, "
                        "round robin, on a GPU machine)")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="train every config with N seeds (train.seed + 0..N-1); tables give mean ± sd over folds "
                        "of the seed means and, for ablations, the paired difference with a 95%% interval")
    p.add_argument("--ablation", nargs="+", default=[], metavar="ABL=FULL",
                   help="compare method ABL with FULL (config names); a config whose `base:` is another "
                        "evaluated config is paired with it automatically")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides applied to every config")
    p.set_defaults(func=run)


def run(args) -> int:
    from stgraph.config import load_config
    from stgraph.data import SlideCollection
    from stgraph.evaluation import cross_validate, make_folds
    from stgraph.models.weights import check_pretrained_weights
    from stgraph.evaluation.folds import select_folds
    from stgraph.evaluation.protocol import check_results_dir

    from stgraph.evaluation.stats import ablation_pairs_by_base

    if args.seeds < 1:
        raise ValueError(f"--seeds must be ≥ 1, got {args.seeds}")
    check_results_dir(args.out, force=args.force)  # before any config or slide is read
    configs, paths = {}, {}
    overrides = list(args.overrides) + ([f"train.device={args.device}"] if args.device else [])
    for path in args.config:
        cfg = with_cli_plugins(load_config(path, overrides), args)
        check_pretrained_weights(cfg)  # before any slide is read
        if cfg.name in configs:  # results are keyed by name: one would silently replace the other
            raise ValueError(f"--config {path} and {paths[cfg.name]} are both named {cfg.name!r}: give each "
                             "config its own name (the `name:` key, or name=... as an override)")
        configs[cfg.name], paths[cfg.name] = cfg, path
    check_apart(args.out, args, list(configs.values()), what="results folder")
    ablations = ablation_pairs_by_base(paths)
    for pair in args.ablation:
        abl, _, full = pair.partition("=")
        if not full or abl not in configs or full not in configs:
            raise ValueError(f"--ablation {pair!r}: expected ABL=FULL naming two evaluated configs "
                             f"({', '.join(configs)})")
        ablations[abl] = full
    collection = SlideCollection(read_many(args))
    folds = make_folds(collection.ids, scheme=args.folds)
    folds = select_folds(folds, args.only_folds)
    frame = cross_validate(configs, collection, folds, out_dir=args.out, baselines=not args.no_baselines,
                           markers=args.markers, keep_runs=args.keep_runs, jobs=args.jobs, seeds=args.seeds,
                           ablations=ablations)
    print((Path(args.out) / "summary.md").read_text())
    print(f"{len(frame)} rows written to {Path(args.out) / 'results.csv'}")
    return 0
