"""``stgraph predict``: a slide's expression from its image.

Three kinds of query, one load → predict → write path (:func:`predict_and_write`):

* one slide (``--slide PATH``, ``--image IMG --spots CSV``, ``--her2st ROOT --section ID``) → ``--out`` file;
* several slides (``--slide`` with several paths or globs, or an ``--out`` folder) → one file per slide;
* whole-slide images (``--wsi``): tissue detection + a spot grid, one file per slide.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

from stgraph.keys import Key

from .common import check_apart, check_genes, device_parent, plot_maps, query_parent, read_query

__all__ = ["add_parser", "run", "predict_and_write"]


def add_parser(sub, parents) -> None:
    p = sub.add_parser("predict", help="predict a slide's expression from its image",
                       parents=[*parents, query_parent(), device_parent()])
    p.add_argument("--model", required=True, help="run folder written by `stgraph train`")
    w = p.add_argument_group("whole-slide images (no spatial transcriptomics: tissue detection + a spot grid)")
    w.add_argument("--wsi", nargs="+", default=None, metavar="SLIDE",
                   help="whole-slide images (.tif/.tiff/.svs/.ndpi/..., or a JPEG/PNG with --mpp) or globs "
                        "('slides/*.svs'); with several, --out is a folder: a cohort (manifest, resumable)")
    w.add_argument("--wsi-sheet", default=None, metavar="CSV",
                   help="a cohort sheet: columns path[, slide_id][, mpp]; --out is a folder with one file per slide "
                        "and manifest.csv; a rerun skips finished slides, a failing slide is recorded and the "
                        f"others go on (exit status {3} when some failed); under torchrun the slides are sharded "
                        "over the processes")
    w.add_argument("--mpp", type=float, default=None,
                   help="µm per level-0 pixel when the file does not state it (overrides the file)")
    w.add_argument("--train-mpp", type=float, default=None, metavar="UM",
                   help="µm per pixel of the training images, for a run that records no physical resolution "
                        "(without it such a run refuses --wsi rather than change scale)")
    w.add_argument("--grid", default="visium", metavar="visium|st|UM",
                   help="spot grid: Visium hex (100 µm pitch, 55 µm spots), legacy ST (200 µm, 100 µm spots) "
                        "or a square pitch in µm (default: visium)")
    w.add_argument("--format", choices=["h5ad", "csv", "parquet", "zarr"], default="h5ad",
                   help="file type written into an output folder (several slides; zarr: SpatialData stores)")
    w.add_argument("--cache", action="store_true",
                   help="keep the slide's features in the user cache dir and reuse them (size is logged)")
    w.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="cache folder (default: $STGRAPH_CACHE_DIR, $XDG_CACHE_HOME/stgraph or ~/.cache/stgraph)")
    w.add_argument("--chunk-size", type=int, default=256, help="patches read and encoded per chunk (memory bound)")
    w.add_argument("--min-saturation", type=int, default=15, metavar="0-255",
                   help="tissue detection: the least HSV saturation of tissue pixels, above Otsu's threshold "
                        "(lower it for faint stains; default 15)")
    w.add_argument("--min-tissue-area", type=float, default=50_000.0, metavar="UM2",
                   help="tissue detection: smaller tissue pieces are dropped, µm² (default 50000)")
    w.add_argument("--max-spots", type=int, default=None, metavar="N",
                   help="refuse a grid estimated (from the tissue area, before anything is allocated) to exceed N "
                        "spots (default: 200000)")
    p.add_argument("--out", required=True,
                   help="output .h5ad (or a .csv / .parquet table export, or a SpatialData .zarr store with the H&E "
                        "and one shape per spot); a folder with several --wsi slides")
    p.add_argument("--force", action="store_true", help="replace an existing output file (or .zarr store) stgraph wrote")
    p.add_argument("--k", type=int, default=None,
                   help="reference spots averaged per query spot (kNN retrieval; default: the run's inference.k)")
    p.add_argument("--similarity", type=registered("inference.similarity"), default=None, metavar="NAME",
                   help="how query and reference embeddings are compared (default: the run's inference.similarity; "
                        "`stgraph components similarities` lists them)")
    p.add_argument("--aggregation", type=registered("inference.aggregation"), default=None, metavar="NAME",
                   help="how the k neighbours' expression is weighted (default: the run's inference.aggregation; "
                        "`stgraph components aggregations`)")
    p.add_argument("--backend", type=registered("inference.backend"), default=None, metavar="NAME",
                   help="kNN search: exact torch, FAISS, or auto (FAISS IVF for large references; default: the "
                        "run's inference.backend)")
    p.add_argument("--plot", nargs="+", default=None, metavar="GENE",
                   help="also draw these genes' predicted maps to <out>.png")
    p.add_argument("--interval", type=float, default=None, metavar="LEVEL",
                   help="also write per-spot prediction intervals at this level (e.g. 0.9) as layers lower/upper, "
                        "calibrated on the training slides (default: the run's trust.interval)")
    p.add_argument("--allow-scale-mismatch", action="store_true",
                   help="predict a slide whose pixel size is probably wrong (none stated while the run has one, a "
                        "spot spacing over 2x from the training slides', a whole-slide tissue longer than a glass "
                        "slide) instead of refusing it")
    p.set_defaults(func=run)


def registered(path: str):
    """An argparse ``type`` that checks a name against the registry behind config option ``path`` when the
    option is given (listing the choices in the parser would import every registry, and torch, for
    ``--help``)."""
    def check(value: str) -> str:
        import argparse

        from stgraph.config.schema import choices

        valid = choices(path)
        if value not in valid:
            raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose from {', '.join(valid)})")
        return value

    check.__name__ = path.rsplit(".", 1)[-1]
    return check


def _retrieval(args) -> dict:
    """The retrieval options of the command line (``None``: the run's config)."""
    return dict(k=args.k, similarity=args.similarity, aggregation=args.aggregation, backend=args.backend)


def _load(args):
    """The run of ``--model`` on ``--device``, with the command line's retrieval options checked against what
    its model does (refused for a model that predicts expression itself) before any slide is read."""
    return _load_on(args, args.device)


def _load_on(args, device):
    from stgraph.inference import load_run
    from stgraph.inference.predict import check_retrieval_options

    loaded = load_run(args.model, device=device)
    check_retrieval_options(loaded.config, **_retrieval(args))
    from stgraph.inference.predict import check_interval

    check_interval(loaded, args.interval)
    return loaded


def predict_and_write(loaded, jobs: Sequence[tuple], predict_one: Callable, force: bool,
                      plot: Optional[Sequence[str]] = None) -> int:
    """The one load → predict → write path: for each ``(source, out path)`` of ``jobs``,
    ``predict_one(loaded, source)`` → AnnData, written to the path (and its gene maps to ``<out>.png``)."""
    from stgraph.inference import write_prediction

    for source, path in jobs:
        pred = predict_one(loaded, source)
        write_prediction(pred, path, force=force)
        print(f"wrote {path}: {pred.n_obs} spots × {pred.n_vars} genes")
        if plot:
            plot_maps(pred, None, plot, Path(path).with_suffix(".png"), force=force)
    return 0


#: File suffixes dropped from a slide's output name (a folder keeps its whole name: 1.0.0 and 1.5.0 differ).
_SLIDE_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".svs", ".ndpi", ".mrxs", ".scn", ".h5ad", ".h5",
                   ".jpg", ".jpeg", ".png")


def _slide_name(path: Path) -> str:
    """The output name of a slide: a Space Ranger ``outs`` folder's parent, a folder's whole name, a file's
    name without its image/AnnData suffix."""
    path = Path(path)
    if path.name == "outs":
        return path.parent.name
    if path.is_dir():
        return path.name
    lower = path.name.lower()
    for suffix in _SLIDE_SUFFIXES:
        if lower.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def _wsi_outputs(args) -> list:
    """(slide path, output path) pairs for --wsi, checked before anything is computed."""
    from stgraph.inference.wsi import WSIPredictionError, expand_slide_paths

    if args.slide or args.image or args.spots or args.her2st or getattr(args, "counts", None):
        raise WSIPredictionError("--wsi replaces --slide/--image/--spots/--counts/--her2st: give one kind of query")
    return _outputs(expand_slide_paths(args.wsi), args)


def _outputs(slides: list, args) -> list:
    """(slide path, output path) pairs: one file, or one file per slide in the --out folder."""
    from stgraph.inference.predict import OUTPUT_SUFFIXES, check_output_path
    from stgraph.inference.wsi import WSIPredictionError
    from stgraph.utils import check_writable_dir
    from stgraph.utils.io import check_not_in_run_folder

    out = Path(args.out)
    if len(slides) == 1 and out.suffix in OUTPUT_SUFFIXES:
        pairs = [(slides[0], out)]
    else:
        if out.suffix in OUTPUT_SUFFIXES:
            raise WSIPredictionError(f"{len(slides)} slides need an output folder, not the file {out}")
        if out.exists() and not out.is_dir():
            raise FileExistsError(f"{out} exists and is not a folder")
        if out.suffix and not out.is_dir():  # p.txt would silently become a folder p.txt/<slide>.h5ad
            raise WSIPredictionError(f"--out {out}: a prediction file ends in {', '.join(OUTPUT_SUFFIXES)}; "
                                     "an output folder (one file per slide) has no suffix")
        check_writable_dir(out, what="output folder")
        check_not_in_run_folder(out, what="output folder")
        names = [_slide_name(s) for s in slides]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise WSIPredictionError(f"several slides are named {dup}: their outputs would collide")
        pairs = [(s, out / f"{n}.{args.format}") for s, n in zip(slides, names)]
    if len(pairs) > 1 or not out.suffix:
        check_apart(out, args, what="output folder")
    for _, path in pairs:
        check_apart(path, args)  # never onto an input slide, whatever --force says
        check_output_path(path, force=args.force)
        if getattr(args, "plot", None):
            from stgraph.utils import check_output_file

            check_output_file(path.with_suffix(".png"), (".png",), force=args.force, what="plot file")
    return pairs


def _set_mpp(adata, mpp) -> None:
    from stgraph.data.image import slide_library

    _, entry = slide_library(adata)
    entry.setdefault(Key.uns.metadata, {})[Key.metadata.microns_per_pixel] = float(mpp)


def query_source(args) -> Optional[dict]:
    """Where the query slide came from, so ``stgraph plot --true`` can read its truth again: ``{slide: path}``
    or ``{her2st: root, section: id}`` (absolute paths); ``None`` for an image + spot table."""
    if args.her2st and args.section:
        return {"her2st": str(Path(args.her2st).resolve()), "section": str(args.section)}
    if args.slide:
        return {"slide": str(Path(args.slide[0] if isinstance(args.slide, list) else args.slide).resolve())}
    return None


def _predict_adata(args, source: Optional[dict] = None):
    """``predict_one`` for a slide given as AnnData (or as a path, read here); the prediction records its
    source slide (``uns['stgraph']['source_slide']``)."""
    from stgraph.data import read_slide
    from stgraph.inference import predict_slide

    from .common import reader_options

    options = reader_options(args)

    def predict_one(loaded, slide):
        adata = read_slide(slide, **options) if isinstance(slide, (str, Path)) else slide
        if args.mpp is not None:
            _set_mpp(adata, args.mpp)
        pred = predict_slide(loaded, adata, progress=True, allow_scale_mismatch=args.allow_scale_mismatch,
                             interval=args.interval, **_retrieval(args))
        where = {"slide": str(Path(slide).resolve())} if isinstance(slide, (str, Path)) else source
        if where and "slide" in where and options:
            # to read it back the same way, from any folder: values naming a file are recorded absolute
            where = {**where, "read": [f"{k}={Path(v).resolve() if Path(v).exists() else v}"
                                       for k, v in options.items()]}
        if where:
            pred.uns.setdefault(Key.uns.stgraph, {})[Key.uns.source_slide] = where
        return pred

    return predict_one


def _wsi_options(args):
    """The whole-slide options, checked before any slide is opened."""
    from stgraph.inference.wsi import parse_grid

    grid = parse_grid(args.grid)
    if args.chunk_size < 1:
        raise ValueError(f"--chunk-size must be ≥ 1, got {args.chunk_size}")
    if not 0 <= args.min_saturation <= 255:
        raise ValueError(f"--min-saturation must be in [0, 255], got {args.min_saturation}")
    if not args.min_tissue_area >= 0:
        raise ValueError(f"--min-tissue-area must be ≥ 0 µm², got {args.min_tissue_area}")
    if args.max_spots is not None and args.max_spots < 1:
        raise ValueError(f"--max-spots must be ≥ 1, got {args.max_spots}")

    def predict_one(loaded, slide, mpp=None, slide_id=None, progress=True):
        from stgraph.inference.wsi import predict_wsi

        return predict_wsi(loaded, slide, grid=grid, mpp=mpp if mpp is not None else args.mpp,
                           train_mpp=args.train_mpp, cache=args.cache, slide_id=slide_id,
                           min_saturation=args.min_saturation, min_area_um2=args.min_tissue_area,
                           cache_dir=args.cache_dir, chunk_size=args.chunk_size, progress=progress,
                           max_spots=args.max_spots, allow_scale_mismatch=args.allow_scale_mismatch,
                           interval=args.interval, **_retrieval(args))

    return predict_one


def _predict_wsi(args) -> int:
    from stgraph.data.wsi import WSIImage
    from stgraph.preprocess.resolution import require_physical_resolution

    if args.wsi_sheet or _is_cohort(args):
        return _predict_cohort(args)
    pairs = _wsi_outputs(args)
    predict_one = _wsi_options(args)
    for slide, _ in pairs:  # pixel size and readability of every slide before any compute
        WSIImage(slide, mpp=args.mpp).close()
    loaded = _load(args)
    require_physical_resolution(loaded.resolution, loaded.config, args.train_mpp)
    return predict_and_write(loaded, pairs, predict_one, force=args.force, plot=args.plot)


def _is_cohort(args) -> bool:
    """Several whole slides, or an output folder: a cohort (manifest, resume, failures recorded)."""
    from stgraph.inference.predict import OUTPUT_SUFFIXES
    from stgraph.inference.wsi import expand_slide_paths

    return Path(args.out).suffix not in OUTPUT_SUFFIXES or len(expand_slide_paths(args.wsi)) > 1


def _predict_cohort(args) -> int:
    """A cohort of whole slides into the --out folder (stgraph.inference.cohort); under torchrun, sharded."""
    from stgraph.inference.cohort import (EXIT_SOME_FAILED, cohort_from_paths, predict_cohort, read_wsi_sheet)
    from stgraph.inference.predict import OUTPUT_SUFFIXES
    from stgraph.inference.wsi import WSIPredictionError, expand_slide_paths
    from stgraph.preprocess.resolution import require_physical_resolution
    from stgraph.utils import check_writable_dir
    from stgraph.utils.distributed import init_distributed
    from stgraph.utils.runtime import resolve_device

    if args.wsi_sheet and args.wsi:
        raise WSIPredictionError("--wsi-sheet replaces --wsi: give the slides in the sheet, or as paths")
    if args.slide or args.image or args.spots or args.her2st or getattr(args, "counts", None):
        raise WSIPredictionError("--wsi/--wsi-sheet replace --slide/--image/--spots/--counts/--her2st: give one "
                                 "kind of query")
    out = Path(args.out)
    if out.suffix in OUTPUT_SUFFIXES or (out.exists() and not out.is_dir()):
        raise WSIPredictionError(f"a cohort's --out is an output folder (one file per slide and manifest.csv), not {out}")
    check_writable_dir(out, what="output folder")
    check_apart(out, args, what="output folder")
    slides = read_wsi_sheet(args.wsi_sheet) if args.wsi_sheet else cohort_from_paths(expand_slide_paths(args.wsi),
                                                                                    args.mpp)
    predict_one = _wsi_options(args)
    resolved = resolve_device(args.device or "auto")
    dist_env = init_distributed(resolved)
    device = f"cuda:{dist_env.local_rank}" if dist_env.enabled and resolved.type == "cuda" else str(resolved)
    loaded = _load_on(args, device)
    require_physical_resolution(loaded.resolution, loaded.config, args.train_mpp)
    summary = predict_cohort(loaded, slides, out, lambda run, s: predict_one(run, s.path, mpp=s.mpp, slide_id=s.slide_id,
                                                                             progress=False),
                             fmt=args.format, force=args.force, dist_env=dist_env)
    if dist_env.is_main:
        line = (f"cohort {out}: {len(summary['done'])} predicted, {len(summary['skipped'])} already done, "
                f"{len(summary['failed'])} failed")
        if summary["failed"]:
            named = "; ".join(f"{s} ({summary['errors'][s]})" for s in summary["failed"][:10])
            line += f": {named}{' ...' if len(summary['failed']) > 10 else ''}"
        print(f"{line}; manifest {out / 'manifest.csv'}")
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    return EXIT_SOME_FAILED if summary["failed"] else 0


def run(args) -> int:
    from stgraph.inference.predict import check_k, check_output_path

    check_k(args.k)  # before any slide is read or any feature computed
    if args.wsi or args.wsi_sheet:
        if getattr(args, "read", None):
            raise ValueError("--read options are for --slide paths; a whole slide takes --mpp (and --grid)")
        return _predict_wsi(args)
    if args.slide:
        from stgraph.inference.wsi import expand_slide_paths

        slides = expand_slide_paths(args.slide)
        if args.fullres_image and len(slides) > 1:
            raise ValueError("--fullres-image goes with one Space Ranger folder, not several slides")
        if len(slides) > 1 or Path(args.out).suffix == "":
            pairs = _outputs(slides, args)
            loaded = _load(args)
            return predict_and_write(loaded, pairs, _predict_adata(args), force=args.force)
        args.slide = [str(slides[0])]
    check_apart(args.out, args)  # never onto an input slide, whatever --force says
    out = check_output_path(args.out, force=args.force)
    if args.plot:
        from stgraph.utils import check_output_file

        check_output_file(out.with_suffix(".png"), (".png",), force=args.force, what="plot file")
    loaded = _load(args)
    if args.plot:  # before any compute or write, so a typo'd gene does not leave a half-done output behind
        check_genes(args.plot, loaded.genes, "the model's")
    adata = read_query(args)
    return predict_and_write(loaded, [(adata, out)], _predict_adata(args, source=query_source(args)),
                             force=args.force, plot=args.plot)
