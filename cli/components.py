"""``stgraph components``: every registry, each entry's options and the first line of its docstring."""
from __future__ import annotations

import json

__all__ = ["add_parser", "run"]


def add_parser(sub, parents) -> None:
    p = sub.add_parser("components", parents=parents,
                       help="list what can be plugged in: every registry, each entry's options and docstring line")
    p.add_argument("registries", nargs="*", metavar="REGISTRY",
                   help="only these registries (e.g. spot_encoders losses); default: all")
    p.add_argument("--json", action="store_true", help="machine-readable output (one JSON object)")
    p.set_defaults(func=run)


def run(args) -> int:
    from stgraph.components import REGISTRIES, format_components, list_components

    unknown = [r for r in args.registries if r not in REGISTRIES]
    if unknown:
        raise ValueError(f"unknown registry {unknown}; valid choices: {list(REGISTRIES)}")
    table = list_components()  # the entry points and --plugin modules are imported already
    if args.registries:
        table = {name: table[name] for name in args.registries}
    if args.json:
        print(json.dumps(table, indent=1, default=repr))
    else:
        print(format_components(table), end="")
    return 0
