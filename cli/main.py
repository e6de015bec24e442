"""``stgraph`` command line: train, predict, extend, evaluate (alias benchmark), plot.

Examples
--------
::

    stgraph train --config configs/cpu/stgchb.yaml --her2st ../shared/data/her2st \
        --sections B4 C2 C3 C4 C5 --out runs/stgchb train.epochs=20
    stgraph predict --model runs/stgchb --her2st ../shared/data/her2st --section C6 --out pred.h5ad
    stgraph predict --model runs/stgchb --wsi slide.svs --out pred.h5ad [--mpp 0.25] [--grid visium|st|150]
    stgraph predict --model runs/stgchb --wsi 'slides/*.tif' --out preds/ --format csv
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
        g.add_argument("--slide", nargs="+", default=None, metavar="PATH",
                       help="the query slide(s): .h5ad, Space Ranger or legacy ST folder; several paths or globs "
                            "write one file per slide into the --out folder")
        g.add_argument("--fullres-image", metavar="IMG", default=None,
                       help="with a Space Ranger --slide folder: its full-resolution H&E image (TIFF, ...), for "
                            "patches at full detail instead of the hires PNG")
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
        path = args.slide[0] if isinstance(args.slide, list) else args.slide
        if getattr(args, "fullres_image", None):
            from stgraph.data.readers.visium import _is_visium

            if not _is_visium(Path(path), {}):
                raise ValueError(f"--fullres-image goes with a Space Ranger folder; {path} is not one")
            return read_slide(path, format="visium", fullres_image=args.fullres_image)
        return read_slide(path)
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
    p.add_argument("--config", required=True,
                   help="a YAML file, or a shipped config by name: stgraph, cpu/bleep, ... (`stgraph configs`)")
    _add_slide_source(p, many=True)
    p.add_argument("--out", required=True, help="run folder to create")
    p.add_argument("--force", action="store_true", help="replace an existing run folder")
    p.add_argument("--resume", action="store_true", help="continue training from <out>/checkpoints/last.pt")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="data-parallel processes on this machine (launches torchrun; one per GPU, or gloo "
                        "processes on CPU); the same as `torchrun --nproc_per_node N -m stgraph.cli train ...`")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")

    p = sub.add_parser("predict", help="predict a slide's expression from its image")
    p.add_argument("--model", required=True, help="run folder written by `stgraph train`")
    _add_slide_source(p, many=False)
    w = p.add_argument_group("whole-slide images (no spatial transcriptomics: tissue detection + a spot grid)")
    w.add_argument("--wsi", nargs="+", default=None, metavar="SLIDE",
                   help="whole-slide images (.tif/.tiff/.svs/.ndpi/...) or globs ('slides/*.svs'); with several, "
                        "--out is a folder and gets one file per slide")
    w.add_argument("--mpp", type=float, default=None,
                   help="µm per level-0 pixel when the file does not state it (overrides the file)")
    w.add_argument("--train-mpp", type=float, default=None, metavar="UM",
                   help="µm per pixel of the training images, for a run that records no physical resolution "
                        "(without it such a run refuses --wsi rather than change scale)")
    w.add_argument("--grid", default="visium", metavar="visium|st|UM",
                   help="spot grid: Visium hex (100 µm pitch, 55 µm spots), legacy ST (200 µm, 100 µm spots) "
                        "or a square pitch in µm (default: visium)")
    w.add_argument("--format", choices=["h5ad", "csv", "parquet"], default="h5ad",
                   help="file type written into an output folder (several slides)")
    w.add_argument("--cache", action="store_true",
                   help="keep the slide's features in the user cache dir and reuse them (size is logged)")
    w.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="cache folder (default: $STGRAPH_CACHE_DIR, $XDG_CACHE_HOME/stgraph or ~/.cache/stgraph)")
    w.add_argument("--chunk-size", type=int, default=256, help="patches read and encoded per chunk (memory bound)")
    p.add_argument("--out", required=True,
                   help="output .h5ad (or a .csv / .parquet table export); a folder with several --wsi slides")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.add_argument("--device", default="auto", help="torch device: auto (CUDA when available), cpu, cuda, cuda:1")
    p.add_argument("--k", type=int, default=None, help="neighbours (default: the run's config)")
    p.add_argument("--similarity", choices=choices("inference.similarity"), default=None)
    p.add_argument("--aggregation", choices=choices("inference.aggregation"), default=None)
    p.add_argument("--backend", choices=choices("inference.backend"), default=None)
    p.add_argument("--plot", nargs="+", default=None, metavar="GENE",
                   help="also draw these genes' predicted maps to <out>.png")

    p = sub.add_parser("extend", help="add slides (with expression) to a trained model's reference, no retraining")
    p.add_argument("--model", required=True, help="run folder written by `stgraph train`")
    _add_slide_source(p, many=True)
    p.add_argument("--device", default="auto", help="torch device: auto (CUDA when available), cpu, cuda, cuda:1")

    for name, help_text in (("evaluate", "cross-validated evaluation of one or more configs with baselines"),
                            ("benchmark", "alias of evaluate")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", nargs="+", required=True,
                       help="one or more YAML files or shipped config names (`stgraph configs`)")
        _add_slide_source(p, many=True)
        p.add_argument("--folds", choices=["loso", "patient"], default="loso",
                       help="leave-one-section-out, or also drop the test section's patient from training")
        p.add_argument("--only-folds", nargs="+", default=None, metavar="ID", help="run only these test slides")
        p.add_argument("--markers", nargs="+", default=None, metavar="GENE", help="marker genes (MG)")
        p.add_argument("--no-baselines", action="store_true", help="skip the baselines")
        p.add_argument("--keep-runs", action="store_true", help="keep each fold's run folder under <out>/runs")
        p.add_argument("--out", required=True, help="results folder")
        p.add_argument("--device", default=None,
                       help="torch device for every fold (train.device; default: each config's)")
        p.add_argument("--jobs", type=int, default=1, metavar="N",
                       help="folds evaluated at once, one process each (cores split between them; a GPU each, "
                            "round robin, on a GPU machine)")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides applied to every config")

    sub.add_parser("configs", help="list the shipped configs (use one by name: --config stgraph)")

    p = sub.add_parser("plot", help="draw predicted (and true) gene maps over the H&E image")
    p.add_argument("--pred", required=True, help="prediction .h5ad")
    p.add_argument("--true", default=None, help="a slide with the true expression (any readable slide)")
    p.add_argument("--genes", nargs="+", required=True)
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--force", action="store_true")
    return parser


def _launch_torchrun(nproc: int, argv: Sequence[str]) -> int:
    """Run this same ``train`` command in ``nproc`` processes under torchrun (``--nproc`` removed)."""
    import subprocess

    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        rest.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "stgraph.cli", *rest]
    log.info("launching %d processes: %s", nproc, " ".join(cmd))
    return subprocess.call(cmd)


def _cmd_train(args) -> int:
    from stgraph.config import load_config
    from stgraph.training import train_model
    from stgraph.training.distributed import env_world_size
    from stgraph.training.run import check_train_inputs

    if args.nproc < 1:
        raise ValueError(f"--nproc must be ≥ 1, got {args.nproc}")
    config = load_config(args.config, args.overrides)
    check_train_inputs(config, args.out, force=args.force, resume=args.resume)  # before reading any slide
    if args.nproc > 1:
        if env_world_size() > 1:
            raise ValueError("--nproc inside a torchrun job: give one or the other")
        import torch

        from stgraph.utils import resolve_device

        if resolve_device(config.train.device).type == "cuda" and args.nproc > torch.cuda.device_count():
            raise ValueError(f"--nproc {args.nproc} on a machine with {torch.cuda.device_count()} GPU(s): one "
                             "process per GPU, or train.device=cpu for gloo processes on the CPU")
        return _launch_torchrun(args.nproc, args.argv)
    slides = _read_many(args)
    run = train_model(config, slides, out=args.out, force=args.force, resume=args.resume)
    import torch.distributed as dist

    rank = 0
    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank()
        dist.destroy_process_group()
    if rank != 0:
        return 0  # rank 0 reports
    best = run.result.best_epoch if run.result else -1
    world = f" in {env_world_size()} processes" if env_world_size() > 1 else ""
    print(f"trained {config.name} on {len(slides)} slide(s){world}; best epoch {best}; run folder: {args.out}")
    return 0


def _slide_name(path: Path) -> str:
    return path.parent.name if path.name == "outs" else path.name.split(".")[0]


def _wsi_outputs(args) -> list:
    """(slide path, output path) pairs for --wsi, checked before anything is computed."""
    from stgraph.inference.wsi import WSIPredictionError, expand_slide_paths

    if args.slide or args.image or args.spots or args.her2st:
        raise WSIPredictionError("--wsi replaces --slide/--image/--spots/--her2st: give one kind of query")
    return _outputs(expand_slide_paths(args.wsi), args)


def _outputs(slides: list, args) -> list:
    """(slide path, output path) pairs: one file, or one file per slide in the --out folder."""
    from stgraph.inference.predict import OUTPUT_SUFFIXES, check_output_path
    from stgraph.inference.wsi import WSIPredictionError

    out = Path(args.out)
    if len(slides) == 1 and out.suffix in OUTPUT_SUFFIXES:
        pairs = [(slides[0], out)]
    else:
        if out.suffix in OUTPUT_SUFFIXES:
            raise WSIPredictionError(f"{len(slides)} slides need an output folder, not the file {out}")
        if out.exists() and not out.is_dir():
            raise FileExistsError(f"{out} exists and is not a folder")
        names = [_slide_name(s) for s in slides]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise WSIPredictionError(f"several slides are named {dup}: their outputs would collide")
        pairs = [(s, out / f"{n}.{args.format}") for s, n in zip(slides, names)]
    for _, path in pairs:
        check_output_path(path, force=args.force)
    return pairs


def _cmd_predict_wsi(args) -> int:
    from stgraph.data.wsi import WSIImage
    from stgraph.inference import load_run, write_prediction
    from stgraph.inference.wsi import parse_grid, predict_wsi
    from stgraph.run.resolution import require_physical_resolution

    pairs = _wsi_outputs(args)
    grid = parse_grid(args.grid)
    if args.chunk_size < 1:
        raise ValueError(f"--chunk-size must be ≥ 1, got {args.chunk_size}")
    for slide, _ in pairs:  # pixel size and readability of every slide before any compute
        WSIImage(slide, mpp=args.mpp).close()
    loaded = load_run(args.model, device=args.device)
    require_physical_resolution(loaded.resolution, loaded.config, args.train_mpp)
    for slide, path in pairs:
        pred = predict_wsi(loaded, slide, grid=grid, mpp=args.mpp, train_mpp=args.train_mpp, k=args.k,
                           similarity=args.similarity,
                           aggregation=args.aggregation, backend=args.backend, cache=args.cache,
                           cache_dir=args.cache_dir, chunk_size=args.chunk_size, progress=True)
        write_prediction(pred, path, force=args.force)
        print(f"wrote {path}: {pred.n_obs} spots × {pred.n_vars} genes")
        if args.plot:
            _plot(pred, None, args.plot, path.with_suffix(".png"), force=args.force)
    return 0


def _set_mpp(adata, mpp) -> None:
    from stgraph.data.image import slide_library

    _, entry = slide_library(adata)
    entry.setdefault(Key.uns.metadata, {})[Key.metadata.microns_per_pixel] = float(mpp)


def _cmd_predict_many(args, pairs) -> int:
    from stgraph.data import read_slide
    from stgraph.inference import load_run, predict_slide, write_prediction

    loaded = load_run(args.model, device=args.device)
    for slide, path in pairs:
        adata = read_slide(slide)
        if args.mpp is not None:
            _set_mpp(adata, args.mpp)
        pred = predict_slide(loaded, adata, k=args.k, similarity=args.similarity, aggregation=args.aggregation,
                             backend=args.backend, progress=True)
        write_prediction(pred, path, force=args.force)
        print(f"wrote {path}: {pred.n_obs} spots × {pred.n_vars} genes")
    return 0


def _cmd_predict(args) -> int:
    from stgraph.inference import load_run, predict_slide, write_prediction
    from stgraph.inference.predict import check_output_path

    if args.wsi:
        return _cmd_predict_wsi(args)
    if args.slide:
        from stgraph.inference.wsi import expand_slide_paths

        slides = expand_slide_paths(args.slide)
        if args.fullres_image and len(slides) > 1:
            raise ValueError("--fullres-image goes with one Space Ranger folder, not several slides")
        if len(slides) > 1 or Path(args.out).suffix == "":
            return _cmd_predict_many(args, _outputs(slides, args))
        args.slide = [str(slides[0])]
    out = check_output_path(args.out, force=args.force)
    if args.plot:
        from stgraph.utils import check_output_file

        check_output_file(out.with_suffix(".png"), (".png",), force=args.force, what="plot file")
    loaded = load_run(args.model, device=args.device)
    if args.plot:  # before any compute or write, so a typo'd gene does not leave a half-done output behind
        _check_genes(args.plot, loaded.genes, "the model's")
    adata = _read_query(args)
    if args.mpp is not None:
        _set_mpp(adata, args.mpp)
    pred = predict_slide(loaded, adata, k=args.k, similarity=args.similarity, aggregation=args.aggregation,
                         backend=args.backend, progress=True)
    write_prediction(pred, out, force=args.force)
    print(f"wrote {out}: {pred.n_obs} spots × {pred.n_vars} genes")
    if args.plot:
        _plot(pred, None, args.plot, out.with_suffix(".png"), force=args.force)
    return 0


def _cmd_extend(args) -> int:
    from stgraph.inference import extend_reference, load_run

    loaded = load_run(args.model, device=args.device)
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
    from stgraph.models.weights import check_pretrained_weights

    configs = {}
    overrides = list(args.overrides) + ([f"train.device={args.device}"] if args.device else [])
    for path in args.config:
        cfg = load_config(path, overrides)
        check_pretrained_weights(cfg)  # before any slide is read
        configs[cfg.name] = cfg
    collection = SlideCollection(_read_many(args))
    folds = make_folds(collection.ids, scheme=args.folds)
    if args.only_folds:
        folds = [f for f in folds if f.name in set(args.only_folds)]
    frame = cross_validate(configs, collection, folds, out_dir=args.out, baselines=not args.no_baselines,
                           markers=args.markers, keep_runs=args.keep_runs, jobs=args.jobs)
    print((Path(args.out) / "summary.md").read_text())
    print(f"{len(frame)} rows written to {Path(args.out) / 'results.csv'}")
    return 0


def _cmd_configs(args) -> int:
    from stgraph.config.shipped import list_configs

    rows = list_configs()
    width = max(len(name) for name, _ in rows)
    for name, text in rows:
        print(f"{name:<{width}}  {text}")
    return 0


COMMANDS = {"configs": _cmd_configs, "train": _cmd_train, "predict": _cmd_predict, "extend": _cmd_extend, "plot": _cmd_plot, "evaluate": _cmd_evaluate,
            "benchmark": _cmd_evaluate}


_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)+=")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line; ``key=value`` tokens typed after a list option (``--sections B4 C2
    train.epochs=60``) are overrides, not list items."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
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
