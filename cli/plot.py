"""``stgraph plot``: draw predicted (and true) gene maps over the H&E image."""
from __future__ import annotations

from pathlib import Path

from stgraph.keys import Key

from .common import plot_maps, query_parent, read_query

__all__ = ["add_parser", "run", "truth_args"]


def add_parser(sub, parents) -> None:
    p = sub.add_parser("plot", help="draw predicted (and true) gene maps over the H&E image",
                       parents=[*parents, query_parent()])
    p.add_argument("--pred", required=True, help="prediction .h5ad (from `stgraph predict`)")
    p.add_argument("--true", nargs="?", const="", default=None, metavar="SLIDE",
                   help="also draw the true maps, from the same slide arguments as predict (--slide PATH, "
                        "--her2st ROOT --section ID), else from the slide the prediction records; "
                        "`--true PATH` names the slide directly")
    p.add_argument("--genes", nargs="+", required=True, metavar="GENE",
                   help="genes to draw, one row each (names as in the prediction's var_names)")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--force", action="store_true", help="replace an existing output PNG")
    p.add_argument("--interval-width", action="store_true",
                   help="add a panel per gene with the width of its prediction interval (a prediction made with "
                        "--interval): where the prediction is least certain")
    p.add_argument("--shared-scale", action="store_true",
                   help="one colour range per gene over the predicted and true panels (default: each panel its own "
                        "robust range, at least a quarter of the gene's usual range)")
    p.set_defaults(func=run)


def truth_args(args, pred):
    """The true slide's reader arguments: ``--true PATH``, else ``--slide``/``--her2st --section``, else the
    source the prediction records (``uns['stgraph']['source_slide']``); ``None`` when no truth is asked."""
    given = bool(args.slide or args.her2st or args.section or args.image or args.spots)
    if args.true is None and not given:
        return None
    if args.true:
        args.slide = [args.true]
        return args
    if given:
        if args.image or args.spots:
            raise ValueError("--image/--spots carry no expression: give the true slide with --slide PATH or "
                             "--her2st ROOT --section ID")
        return args
    source = dict((pred.uns.get(Key.uns.stgraph) or {}).get(Key.uns.source_slide) or {})
    if "slide" in source:
        args.slide = [str(source["slide"])]
        args.read = [str(x) for x in source.get("read", [])]  # the reader options it was predicted with
    elif "her2st" in source and "section" in source:
        args.her2st, args.section = str(source["her2st"]), str(source["section"])
    else:
        raise ValueError("--true: this prediction does not record its source slide; give it with --slide PATH "
                         "or --her2st ROOT --section ID")
    return args


def run(args) -> int:
    import anndata

    pred_path = Path(args.pred)
    if not pred_path.is_file():
        raise FileNotFoundError(f"prediction file not found: {pred_path}")
    try:
        pred = anndata.read_h5ad(pred_path)
    except Exception as err:  # h5py's OSError, a truncated file, an .h5ad of another layout
        raise ValueError(f"--pred {pred_path}: not a readable .h5ad prediction ({type(err).__name__})") from None
    out = Path(args.out)
    truth = truth_args(args, pred)
    from stgraph.utils import check_output_file

    from .common import check_apart

    check_apart(out, args, what="plot file")
    if truth is not None:
        check_apart(out, truth, what="plot file")
    check_output_file(out, (".png", ".pdf", ".svg"), force=args.force, what="plot file")  # before the truth is read
    true = read_query(truth) if truth is not None else None
    plot_maps(pred, true, args.genes, out, force=args.force, interval_width=args.interval_width,
              shared_scale=args.shared_scale)
    return 0
