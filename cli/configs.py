"""``stgraph configs``: the shipped configs, one line each (use one by name: ``--config stgraph``)."""
from __future__ import annotations

__all__ = ["add_parser", "run"]


def add_parser(sub, parents) -> None:
    p = sub.add_parser("configs", help="list the shipped configs (use one by name: --config stgraph)",
                       parents=parents)
    p.set_defaults(func=run)


def run(args) -> int:
    from stgraph.config.shipped import list_configs

    rows = list_configs()
    width = max(len(name) for name, _ in rows)
    for name, text in rows:
        print(f"{name:<{width}}  {text}")
    return 0
