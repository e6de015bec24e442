"""``stgraph extend``: add slides (with expression) to a trained model's reference, no retraining."""
from __future__ import annotations

from .common import device_parent, read_many, slides_parent

__all__ = ["add_parser", "run"]


def add_parser(sub, parents) -> None:
    p = sub.add_parser("extend", help="add slides (with expression) to a trained model's reference, no retraining",
                       parents=[*parents, slides_parent(), device_parent()])
    p.add_argument("--model", required=True, help="run folder written by `stgraph train`")
    p.set_defaults(func=run)


def run(args) -> int:
    from stgraph.inference import extend_reference, load_run
    from stgraph.utils.lock import check_unlocked

    check_unlocked(args.model)  # a live writer owns the run: refused before anything is read
    loaded = load_run(args.model, device=args.device)
    before = loaded.reference.n_spots
    store = extend_reference(loaded, read_many(args))
    print(f"reference of {args.model}: {before} → {store.n_spots} spots "
          f"(previous reference kept as reference.prev.h5)")
    return 0
