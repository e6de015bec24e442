"""``stgraph`` command line: train, predict, extend, evaluate (alias benchmark), plot.

Examples
--------
::

    stgraph train --config configs/cpu/stgchb.yaml --her2st ../shared/data/her2st \
        --sections B4 C2 C3 C4 C5 --out runs/stgchb train.epochs=20
    stgraph predict --model runs/stgchb --her2st ../shared/data/her2st --section C6 --out pred.h5ad
    stgraph plot --pred pred.h5ad --genes ERBB2 GNAS --out maps.png
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
import warnings
from typing import Optional, Sequence

# torch-geometric calls the deprecated torch.jit.script at import time; the warning is not the user's concern.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

from stgraph import __version__  # noqa: E402
from stgraph.config.schema import choices  # noqa: E402
from stgraph.errors import StgraphError  # noqa: E402
from stgraph.keys import Key  # noqa: E402

__all__ = ["main", "build_parser", "parse_args"]

log = logging.getLogger("stgraph")


def _add_slide_source(p: argparse.ArgumentParser, many: bool) -> None:
    g = p.add_argument_group("slides")
    if many:
        g.add_argument("--data", nargs="+", default=[], metavar="PATH",
                       help="slides: .h5ad files, Space Ranger folders, or legacy ST folders")
        g.add_argument("--sections", nargs="+", default=None, metavar="ID",
                       help="with --her2st: the sections to use (default: the six imaged ones)")
    else:
        g.add_argument("--slide", metavar="PATH", help="the query slide: .h5ad, Space Ranger or legacy ST folder")
        g.add_argument("--image", metavar="IMG", help="an H&E image (with --spots) for a slide without expression")
        g.add_argument("--spots", metavar="CSV", help="CSV of spot centres in image pixels (columns x,y)")
        g.add_argument("--section", metavar="ID", help="with --her2st: the section to read")
    g.add_argument("--her2st", metavar="ROOT", help="HER2+ data root (ST-cnts/, ST-spotfiles/, ST-imgs/)")


def _read_many(args) -> list:
    from stgraph.data import SlideCollection, read_slide
    from stgraph.data.readers import HER2ST_IMAGED_SECTIONS, read_her2st

    slides = [read_slide(p) for p in args.data]
    if args.her2st:
        sections = args.sections or list(HER2ST_IMAGED_SECTIONS)
        slides += [read_her2st(args.her2st, s) for s in sections]
    if not slides:
        raise ValueError("no slides given (use --data PATH... or --her2st ROOT)")
    return SlideCollection(slides).slides  # checks that slide ids are unique


def _read_query(args):
    from stgraph.data import read_slide
    from stgraph.data.readers import read_her2st, read_spot_csv

    if args.her2st and args.section:
        return read_her2st(args.her2st, args.section)
    if args.image or args.spots:
        if not (args.image and args.spots):
            raise ValueError("--image and --spots go together")
        return read_spot_csv(args.image, args.spots)
    if args.slide:
        return read_slide(args.slide)
    raise ValueError("give the query slide with --slide PATH, --image IMG --spots CSV, "
                     "or --her2st ROOT --section ID")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stgraph", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="stgraph's debug log lines")
    parser.add_argument("--version", action="version", version=f"stgraph {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_parser = sub.add_parser

    def add_parser(name, **kw):  # every subcommand also accepts -v after its name
        p = _add_parser(name, **kw)
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="stgraph's debug log lines")
        return p

    sub.add_parser = add_parser

    p = sub.add_parser("train", help="train a model and store its reference in a run folder")
    p.add_argument("--config", required=True, help="YAML config (configs/*.yaml)")
    _add_slide_source(p, many=True)
    p.add_argument("--out", required=True, help="run folder to create")
    p.add_argument("--force", action="store_true", help="replace an existing run folder")
    p.add_argument("--resume", action="store_true", help="continue training from <out>/checkpoints/last.pt")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")

    p = sub.add_parser("predict", help="predict a slide's expression from its image")
    p.add_argument("--model", required=True, help="run folder written by `stgraph train`")
    _add_slide_source(p, many=False)
    p.add_argument("--out", required=True, help="output .h5ad")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.add_argument("--k", type=int, default=None, help="neighbours (default: the run's config)")
    p.add_argument("--similarity", choices=choices("inference.similarity"), default=None)
    p.add_argument("--aggregation", choices=choices("inference.aggregation"), default=None)
    p.add_argument("--backend", choices=choices("inference.backend"), default=None)
    p.add_argument("--plot", nargs="+", default=None, metavar="GENE",
                   help="also draw these genes' predicted maps to <out>.png")

    p = sub.add_parser("extend", help="add slides (with expression) to a trained model's reference, no retraining")
    p.add_argument("--model", required=True, help="run folder written by `stgraph train`")
    _add_slide_source(p, many=True)

    for name, help_text in (("evaluate", "cross-validated evaluation of one or more configs with baselines"),
                            ("benchmark", "alias of evaluate")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", nargs="+", required=True, help="one or more YAML configs")
        _add_slide_source(p, many=True)
        p.add_argument("--folds", choices=["loso", "patient"], default="loso",
                       help="leave-one-section-out, or also drop the test section's patient from training")
        p.add_argument("--only-folds", nargs="+", default=None, metavar="ID", help="run only these test slides")
        p.add_argument("--markers", nargs="+", default=None, metavar="GENE", help="marker genes (MG)")
        p.add_argument("--no-baselines", action="store_true", help="skip the baselines")
        p.add_argument("--keep-runs", action="store_true", help="keep each fold's run folder under <out>/runs")
        p.add_argument("--out", required=True, help="results folder")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides applied to every config")

    p = sub.add_parser("plot", help="draw predicted (and true) gene maps over the H&E image")
    p.add_argument("--pred", required=True, help="prediction .h5ad")
    p.add_argument("--true", default=None, help="a slide with the true expression (any readable slide)")
    p.add_argument("--genes", nargs="+", required=True)
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--force", action="store_true")
    return parser


def _cmd_train(args) -> int:
    from stgraph.config import load_config
    from stgraph.training import train_model
    from stgraph.training.run import check_train_inputs

    config = load_config(args.config, args.overrides)
    check_train_inputs(config, args.out, force=args.force, resume=args.resume)  # before reading any slide
    slides = _read_many(args)
    run = train_model(config, slides, out=args.out, force=args.force, resume=args.resume)
    best = run.result.best_epoch if run.result else -1
    print(f"trained {config.name} on {len(slides)} slide(s); best epoch {best}; run folder: {args.out}")
    return 0


def _cmd_predict(args) -> int:
    from stgraph.inference import load_run, predict_slide, write_prediction

    from stgraph.utils import check_output_file

    out = Path(args.out)
    check_output_file(out, (".h5ad",), force=args.force, what="prediction file (--out)")
    if args.plot:
        check_output_file(out.with_suffix(".png"), (".png",), force=args.force, what="plot file")
    loaded = load_run(args.model)
    if args.plot:  # before any compute or write, so a typo'd gene does not leave a half-done output behind
        _check_genes(args.plot, loaded.genes, "the model's")
    adata = _read_query(args)
    pred = predict_slide(loaded, adata, k=args.k, similarity=args.similarity, aggregation=args.aggregation,
                         backend=args.backend, progress=True)
    write_prediction(pred, out, force=args.force)
    print(f"wrote {out}: {pred.n_obs} spots × {pred.n_vars} genes")
    if args.plot:
        _plot(pred, None, args.plot, out.with_suffix(".png"), force=args.force)
    return 0


def _cmd_extend(args) -> int:
    from stgraph.inference import extend_reference, load_run

    loaded = load_run(args.model)
    before = loaded.reference.n_spots
    store = extend_reference(loaded, _read_many(args))
    print(f"reference of {args.model}: {before} → {store.n_spots} spots "
          f"(previous reference kept as reference.prev.h5)")
    return 0


def _check_genes(genes, known, whose: str) -> None:
    known = set(known)
    missing = [g for g in genes if g not in known]
    if missing:
        raise KeyError(f"gene(s) {missing} are not among {whose} {len(known)} genes")


def _plot(pred, true, genes, path: Path, force: bool) -> None:
    import matplotlib.pyplot as plt

    from stgraph.pl.spatial import plot_genes

    if path.exists() and not force:
        raise FileExistsError(f"{path} already exists (use --force to replace it)")
    _check_genes(genes, pred.var_names, "the prediction's")
    if true is not None:
        from stgraph.data import pp

        true = pp.normalize_log1p(true, copy=True) if Key.layers.counts not in true.layers else true
    fig = plot_genes(pred, genes, adata_true=true, path=path)
    plt.close(fig)
    print(f"wrote {path}")


def _cmd_plot(args) -> int:
    import anndata

    from stgraph.data import read_slide

    pred_path = Path(args.pred)
    if not pred_path.is_file():
        raise FileNotFoundError(f"prediction file not found: {pred_path}")
    pred = anndata.read_h5ad(pred_path)
    true = read_slide(args.true) if args.true else None
    _plot(pred, true, args.genes, Path(args.out), force=args.force)
    return 0


def _cmd_evaluate(args) -> int:
    from stgraph.config import load_config
    from stgraph.data import SlideCollection
    from stgraph.evaluation import cross_validate, make_folds

    configs = {}
    for path in args.config:
        cfg = load_config(path, args.overrides)
        configs[cfg.name] = cfg
    collection = SlideCollection(_read_many(args))
    folds = make_folds(collection.ids, scheme=args.folds)
    if args.only_folds:
        folds = [f for f in folds if f.name in set(args.only_folds)]
    frame = cross_validate(configs, collection, folds, out_dir=args.out, baselines=not args.no_baselines,
                           markers=args.markers, keep_runs=args.keep_runs)
    print((Path(args.out) / "summary.md").read_text())
    print(f"{len(frame)} rows written to {Path(args.out) / 'results.csv'}")
    return 0


COMMANDS = {"train": _cmd_train, "predict": _cmd_predict, "extend": _cmd_extend, "plot": _cmd_plot, "evaluate": _cmd_evaluate,
            "benchmark": _cmd_evaluate}


_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)+=")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line; ``key=value`` tokens typed after a list option (``--sections B4 C2
    train.epochs=60``) are overrides, not list items."""
    args = build_parser().parse_args(argv)
    if hasattr(args, "overrides"):
        moved = []
        for attr in ("sections", "only_folds", "markers", "data"):
            values = getattr(args, attr, None)
            if not values:
                continue
            keep = [v for v in values if not (_OVERRIDE.match(v) and not Path(v).exists())]
            moved += [v for v in values if v not in keep]
            setattr(args, attr, keep)
        args.overrides = moved + list(args.overrides)
    return args


def _exit_on_sigterm() -> None:
    """Turn SIGTERM (``kill``, a scheduler's time limit) into ``SystemExit`` so that cleanup runs: a half-built
    run folder or a temporary file is removed and an old run stays as it was."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    _exit_on_sigterm()
    import matplotlib

    matplotlib.use("Agg")  # the CLI only writes figures to files; the library leaves the backend to the user
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)  # third-party loggers stay at INFO
    try:
        return COMMANDS[args.command](args)
    except (StgraphError, FileNotFoundError, FileExistsError, ValueError, KeyError) as err:
        if args.verbose:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
