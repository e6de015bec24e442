"""What the commands share: argument groups (as argparse ``parents=``), reading slides from those arguments,
output paths and the gene-map plot."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from stgraph.keys import Key

__all__ = ["input_paths", "check_apart", "verbose_parent", "plugin_parent", "plugins_in", "with_cli_plugins", "slides_parent", "query_parent", "device_parent", "read_many", "read_query", "reader_options",
           "check_genes", "plot_maps", "log"]

log = logging.getLogger("stgraph")


def verbose_parent() -> argparse.ArgumentParser:
    """``-v`` after a command's name too (the top-level parser has its own)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="stgraph's debug log lines")
    return p


def plugin_parent() -> argparse.ArgumentParser:
    """``--plugin MODULE`` after a command's name too (the top-level parser has its own)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--plugin", action="append", metavar="MODULE", default=argparse.SUPPRESS,
                   help="import MODULE first (it registers components); repeatable")
    return p


def plugins_in(argv) -> list[str]:
    """The ``--plugin MODULE`` / ``--plugin=MODULE`` values of a command line, in order (read before the
    parser is built, so that the plugins' names are among its ``choices=``)."""
    out, argv = [], list(argv)
    for i, a in enumerate(argv):
        if a == "--":
            break
        if a == "--plugin" and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif a.startswith("--plugin="):
            out.append(a.split("=", 1)[1])
    return out


def with_cli_plugins(config, args):
    """``config`` with the command line's ``--plugin`` modules added to its ``plugins`` (so that the run
    folder, and the worker processes of ``evaluate --jobs``, import them again)."""
    extra = list(getattr(args, "plugin", None) or [])
    if extra:
        config.plugins = list(dict.fromkeys([*config.plugins, *extra]))
    return config


def _her2st(g) -> None:
    g.add_argument("--her2st", metavar="ROOT", help="HER2+ data root (ST-cnts/, ST-spotfiles/, ST-imgs/)")


def slides_parent() -> argparse.ArgumentParser:
    """Several slides (train, extend, evaluate): ``--data PATH...`` and/or ``--her2st ROOT [--sections ID...]``."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("slides")
    g.add_argument("--data", nargs="+", default=[], metavar="PATH",
                   help="slides: .h5ad files, Space Ranger folders, or legacy ST folders")
    g.add_argument("--sections", nargs="+", default=None, metavar="ID",
                   help="with --her2st: the sections to use (default: the six imaged ones)")
    g.add_argument("--samples", metavar="SHEET",
                   help="a sample sheet (CSV): columns sample_id,counts,spots,image (legacy ST) or sample_id,path")
    g.add_argument("--counts", action="append", default=[], metavar="TSV",
                   help="a legacy ST section's counts .tsv(.gz); with --spots and --image, repeatable (one "
                        "section per group)")
    g.add_argument("--spots", action="append", default=[], metavar="TSV",
                   help="with --counts: the section's spot selection .tsv")
    g.add_argument("--image", action="append", default=[], metavar="IMG", help="with --counts: the section's H&E")
    _read_option(g, "--data")
    _her2st(g)
    return p


def _read_option(g, paths: str) -> None:
    g.add_argument("--read", action="append", default=[], metavar="KEY=VALUE",
                   help=f"a reader option for the {paths} paths, repeatable: for an .h5ad not in the stgraph "
                        "convention x=COL y=COL (or spatial_key=KEY), axis_order=yx, coordinates=um, image=IMG, "
                        "mpp=UM, spot_diameter_um=UM, slide_id=ID; for a SpatialData store table=, image=, "
                        "coordinate_system=, region=, microns_per_pixel=; for any reader pseudospot_um=UM "
                        "(docs/spatialdata.md)")


def reader_options(args) -> dict:
    """The ``--read KEY=VALUE`` options as keyword arguments for :func:`stgraph.data.read_slide` (values stay
    strings: each reader converts and checks its own)."""
    out: dict = {}
    for item in getattr(args, "read", None) or []:
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--read {item!r}: expected KEY=VALUE (e.g. --read x=x_centroid)")
        if key in out:
            raise ValueError(f"--read {key}= given twice")
        out[key] = value
    return out


def _legacy_groups(counts: list, spots: list, images: list) -> list[tuple[Path, Path, Path]]:
    """The ``--counts/--spots/--image`` groups, checked (counts, files present) before any slide is read."""
    from stgraph.data.errors import SlideFormatError, require_file

    if not (len(counts) == len(spots) == len(images)):
        raise SlideFormatError(f"--counts, --spots and --image go in groups, one of each per legacy ST section "
                               f"(got {len(counts)} --counts, {len(spots)} --spots, {len(images)} --image)")
    return [(require_file(c, "--counts file"), require_file(s, "--spots file"), require_file(i, "--image file"))
            for c, s, i in zip(counts, spots, images)]


def query_parent() -> argparse.ArgumentParser:
    """The query of ``predict``: ``--slide``, ``--image`` + ``--spots`` or ``--her2st`` + ``--section``."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("slides")
    g.add_argument("--slide", nargs="+", default=None, metavar="PATH",
                   help="the query slide(s): .h5ad, Space Ranger or legacy ST folder; several paths or globs "
                        "write one file per slide into the --out folder")
    g.add_argument("--fullres-image", metavar="IMG", default=None,
                   help="with a Space Ranger --slide folder: its full-resolution H&E image (TIFF, ...), for "
                        "patches at full detail instead of the hires PNG")
    g.add_argument("--image", metavar="IMG", help="an H&E image (with --spots) for a slide without expression")
    g.add_argument("--spots", metavar="CSV", help="CSV of spot centres in image pixels (columns x,y); with "
                                                  "--counts: a legacy ST spot selection .tsv")
    g.add_argument("--counts", metavar="TSV", default=None,
                   help="a legacy ST section's counts .tsv(.gz), with --spots SELECTION.tsv and --image IMG")
    g.add_argument("--section", metavar="ID", help="with --her2st: the section to read")
    _read_option(g, "--slide")
    _her2st(g)
    return p


def device_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--device", default="auto", help="torch device: auto (CUDA when available), cpu, cuda, cuda:1")
    return p


def _listed(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def input_paths(args, configs=()) -> list[str]:
    """Every path a command reads: slides (files, folders, globs expanded), images, spot tables, sample
    sheets and the paths they list, HER2+ data roots, the run (``--model``), config files and the files a
    config names (gene lists, weights). An output is checked against them all (:func:`check_apart`)."""
    import glob

    out: list[str] = []
    for name in ("data", "slide", "wsi", "counts", "spots", "image", "fullres_image", "her2st", "model", "pred",
                 "config"):
        for value in _listed(getattr(args, name, None)):
            value = str(value)
            out.append(value)
            if any(ch in value for ch in "*?["):
                out.extend(glob.glob(value))
    for value in reader_options(args).values():  # --read image=IMG names an input too
        out.append(str(value))
    sheet = getattr(args, "samples", None)
    if sheet:
        out.append(str(sheet))
        try:
            from stgraph.data.readers import parse_sample_sheet

            for row in parse_sample_sheet(sheet):
                out.extend(str(v) for k, v in row.items() if k != "sample_id")
        except Exception:  # the sheet's own errors are reported when it is read
            pass
    for config in configs:
        from stgraph.config.load import PATH_FIELDS

        for section_path, attr in PATH_FIELDS:
            node = config
            for part in section_path.split("."):
                node = getattr(node, part)
            value = getattr(node, attr)
            if isinstance(value, str) and Path(value).exists():
                out.append(value)
    return [p for p in out if Path(p).exists() or Path(p).is_symlink()]


def check_apart(output, args, configs=(), what: str = "output", run_folder_ok: bool = False) -> None:
    """Refuse an ``output`` that is, contains or lies inside one of the command's inputs (before any compute,
    ``--force`` or not): :func:`stgraph.utils.io.check_apart` over :func:`input_paths`; first, unless
    ``run_folder_ok`` (``train``'s own run folder), an output in or on a run folder, with that reason."""
    from stgraph.utils.io import check_apart as _check
    from stgraph.utils.io import check_not_in_run_folder

    if not run_folder_ok:
        check_not_in_run_folder(output, what)
    _check(output, input_paths(args, configs), what=what)


def read_many(args) -> list:
    """The slides of ``--data``, ``--samples``, ``--counts/--spots/--image`` groups and ``--her2st`` (ids
    checked unique). The sheet and the groups are checked whole before any slide is read."""
    from stgraph.data import SlideCollection, read_slide
    from stgraph.data.readers import HER2ST_IMAGED_SECTIONS, parse_sample_sheet, read_her2st, read_st_legacy

    groups = _legacy_groups(getattr(args, "counts", []) or [], getattr(args, "spots", []) or [],
                            getattr(args, "image", []) or [])
    sheet = parse_sample_sheet(args.samples) if getattr(args, "samples", None) else []
    options = reader_options(args)
    if options and not (args.data or any("path" in row for row in sheet)):
        raise ValueError("--read options go with slide paths (--data PATH... or a sample sheet's path column)")
    slides = [read_slide(p, **options) for p in args.data]
    from stgraph.data.slide_id import set_slide_id

    for row in sheet:  # the sheet's sample_id names the slide, whatever the file calls it
        slides.append(set_slide_id(read_slide(row["path"], **options), row["sample_id"]) if "path" in row else
                      read_st_legacy(row["counts"], row["spots"], row["image"], slide_id=row["sample_id"]))
    slides += [read_st_legacy(*g) for g in groups]
    if args.her2st:
        sections = args.sections or list(HER2ST_IMAGED_SECTIONS)
        slides += [read_her2st(args.her2st, s) for s in sections]
    if not slides:
        raise ValueError("no slides given (use --data PATH..., --samples SHEET, --counts/--spots/--image "
                         "or --her2st ROOT)")
    return SlideCollection(slides).slides  # checks that slide ids are unique


def read_query(args):
    """The one query slide of ``predict`` (see :func:`query_parent`)."""
    from stgraph.data import read_slide
    from stgraph.data.readers import read_her2st, read_spot_csv

    options = reader_options(args)
    if options and not args.slide:
        raise ValueError("--read options go with --slide PATH")
    if args.her2st and args.section:
        return read_her2st(args.her2st, args.section)
    if getattr(args, "counts", None):
        from stgraph.data.readers import read_st_legacy

        if not (args.spots and args.image):
            raise ValueError("--counts goes with --spots SELECTION.tsv and --image IMG (one legacy ST section)")
        return read_st_legacy(*_legacy_groups([args.counts], [args.spots], [args.image])[0])
    if args.image or args.spots:
        if not (args.image and args.spots):
            raise ValueError("--image and --spots go together")
        return read_spot_csv(args.image, args.spots)
    if args.slide:
        path = args.slide[0] if isinstance(args.slide, list) else args.slide
        if getattr(args, "fullres_image", None):
            from stgraph.data.readers.visium import is_visium

            if not is_visium(Path(path)):
                raise ValueError(f"--fullres-image goes with a Space Ranger folder; {path} is not one")
            return read_slide(path, format="visium", fullres_image=args.fullres_image, **options)
        return read_slide(path, **options)
    raise ValueError("give the query slide with --slide PATH, --image IMG --spots CSV, "
                     "or --her2st ROOT --section ID")


def check_genes(genes, known, whose: str) -> None:
    known = set(known)
    missing = [g for g in genes if g not in known]
    if missing:
        raise KeyError(f"gene(s) {missing} are not among {whose} {len(known)} genes")


def plot_maps(pred, true, genes, path: Path, force: bool, interval_width: bool = False,
              shared_scale: bool = False) -> None:
    """Predicted (and true) maps of ``genes`` over the H&E image, written to ``path``."""
    import matplotlib.pyplot as plt

    from stgraph.pl.spatial import plot_genes

    if path.exists() and not force:
        raise FileExistsError(f"{path} already exists (use --force to replace it)")
    if path.exists() or path.is_symlink():
        from stgraph.utils.io import check_replaceable

        check_replaceable(path)  # only a figure stgraph wrote is replaced
    check_genes(genes, pred.var_names, "the prediction's")
    if Key.var.reliable in pred.var:  # a map of a gene the run cannot predict reliably is drawn, and said so
        shaky = [g for g in genes if not bool(pred.var.loc[g, Key.var.reliable])]
        if shaky:
            r = ", ".join(f"{g} (expected r {float(pred.var.loc[g, Key.var.expected_r]):.2f})" for g in shaky)
            log.warning("unreliable gene(s) drawn: %s; `stgraph genes RUN --min-r 0.3` lists the reliable ones", r)
    if true is not None:
        from stgraph.data import pp

        true = pp.log_normalised(true)
    fig = plot_genes(pred, genes, adata_true=true, path=path, interval_width=interval_width,
                     shared_scale=shared_scale)
    plt.close(fig)
    print(f"wrote {path}")
