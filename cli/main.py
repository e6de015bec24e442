"""stgraph command line: train, predict, extend, evaluate (alias benchmark), plot, genes, configs, components.

Examples
--------
::

    stgraph train --config configs/cpu/stgchb.yaml --her2st ../shared/data/her2st \
        --sections B4 C2 C3 C4 C5 --out runs/stgchb train.epochs=20
    stgraph predict --model runs/stgchb --her2st ../shared/data/her2st --section C6 --out pred.h5ad
    stgraph predict --model runs/stgchb --wsi slide.svs --out pred.h5ad [--mpp 0.25] [--grid visium|st|150]
    stgraph predict --model runs/stgchb --wsi 'slides/*.tif' --out preds/ --format csv
    stgraph plot --pred pred.h5ad --genes ERBB2 GNAS --out maps.png
    stgraph --plugin my_lab.encoders train --config my_variant.yaml ...
    stgraph components --json

Each command is one module of this package (``train``, ``predict``, ``extend``, ``evaluate``, ``plot``,
``components``) with ``add_parser(subparsers, parents)`` and ``run(args)``; the argument groups they share
are in ``common``. ``--plugin MODULE`` (before or after the command, repeatable) imports a module that
registers components before anything else, as do the installed ``stgraph.plugins`` entry points.
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
from stgraph.errors import StgraphError  # noqa: E402

from . import components, configs, evaluate, extend, genes, plot, predict, train  # noqa: E402
from .common import log, plugin_parent, plugins_in, verbose_parent  # noqa: E402

__all__ = ["main", "console_main", "build_parser", "parse_args", "COMMANDS"]

#: Command name → its module (``benchmark`` is an alias of ``evaluate``).
COMMANDS = {"train": train, "predict": predict, "extend": extend, "evaluate": evaluate, "benchmark": evaluate,
            "plot": plot, "genes": genes, "configs": configs, "components": components}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stgraph", description=__doc__.split("\n")[0].replace("``", ""),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="stgraph's debug log lines")
    parser.add_argument("--version", action="version", version=f"stgraph {__version__}")
    parser.add_argument("--plugin", action="append", metavar="MODULE", default=[],
                        help="import MODULE first: a plugin that registers components (repeatable); installed "
                             "packages' stgraph.plugins entry points are imported too")
    sub = parser.add_subparsers(dest="command", required=True)
    parents = [verbose_parent(), plugin_parent()]  # every subcommand also accepts -v and --plugin after its name
    for module in (train, predict, extend, evaluate, plot, genes, configs, components):
        module.add_parser(sub, parents)
    return parser


_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)+=")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line; ``key=value`` tokens typed after a list option (``--sections B4 C2
    train.epochs=60``) are overrides, not list items."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.plugin = plugins_in(args.argv)  # given before and after the command name alike
    # `key=value` tokens between options (`... train.epochs=1 --out r train.lr=1e-3`): argparse fills the
    # positional list once and leaves the later ones over; they are overrides too. Anything else is an error.
    stray = [t for t in extra if not (hasattr(args, "overrides") and _OVERRIDE.match(t))]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides) + extra
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


def _load_plugins(argv: Sequence[str]) -> Optional[int]:
    """Import the entry points and ``--plugin`` modules before the parser is built (its ``choices=`` list
    their names); a plugin that fails to import is one ``error:`` line (exit status 2)."""
    from stgraph.plugins import load_plugins

    try:
        load_plugins(plugins_in(argv), origin="--plugin")
    except StgraphError as err:
        if "-v" in argv or "--verbose" in argv:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return None


def configure_logging(verbose: bool) -> None:
    """stgraph's own lines at INFO (DEBUG with ``-v``); other libraries' at WARNING (INFO with ``-v``), so
    e.g. faiss's "Could not load library with AVX512 support" stays out of a normal run."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    log.setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; returns the exit status (2 for a user error, printed as one ``error:`` line).
    Callable from Python: it installs no signal handler (:func:`console_main` does)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    failed = _load_plugins(argv)
    if failed is not None:
        return failed
    args = parse_args(argv)
    import os

    # The CLI only writes figures to files (the library leaves the backend to the user); set for when
    # matplotlib is first imported, so a command that draws nothing never imports it.
    os.environ["MPLBACKEND"] = "Agg"
    configure_logging(args.verbose)
    try:
        return args.func(args)
    except (StgraphError, FileNotFoundError, FileExistsError, ValueError, KeyError) as err:
        if args.verbose:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as err:
        full = disk_full(err)
        if full is None or args.verbose:
            raise
        print(f"error: {full}", file=sys.stderr)
        return 2


def disk_full(err: BaseException) -> Optional[str]:
    """One line for an exception that is a full disk (errno 28 anywhere in its chain, or torch's and h5py's
    words for it), naming the path when the error carries one; ``None`` for any other error."""
    import errno

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        text = str(err)
        if (isinstance(err, OSError) and err.errno == errno.ENOSPC) or "No space left on device" in text \
                or "errno = 28" in text or "unexpected pos" in text:
            where = getattr(err, "filename", None)
            return (f"no space left on the device{f' writing {where}' if where else ''}: free some space (or "
                    "point --out / data.cache_dir elsewhere) and run the command again; nothing half-written was "
                    "kept")
        err = err.__cause__ or err.__context__
    return None


def console_main() -> int:
    """The ``stgraph`` console script (and ``python -m stgraph.cli``): :func:`main` with SIGTERM turned into
    a clean exit. Only the program's own entry point installs that handler, never a caller of ``main``."""
    _exit_on_sigterm()
    from stgraph.utils.threads import configure_threads

    configure_threads()  # before torch is imported: idle OpenMP threads yield their core on a shared machine
    return main()


if __name__ == "__main__":
    sys.exit(console_main())
