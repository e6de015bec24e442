"""``stgraph train``: train a model and store its reference in a run folder."""
from __future__ import annotations

import sys
from typing import Sequence

from .common import check_apart, log, read_many, slides_parent, with_cli_plugins

__all__ = ["add_parser", "run"]


def add_parser(sub, parents) -> None:
    p = sub.add_parser("train", help="train a model and store its reference in a run folder",
                       parents=[*parents, slides_parent()])
    p.add_argument("--config", required=True,
                   help="a YAML file, or a shipped config by name: stgraph, cpu/bleep, ... (`stgraph configs`)")
    p.add_argument("--out", required=True, help="run folder to create")
    p.add_argument("--force", action="store_true", help="replace an existing run folder")
    p.add_argument("--resume", action="store_true", help="continue training from <out>/checkpoints/last.pt")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="data-parallel processes on this machine (launches torchrun; one per GPU, or gloo "
                        "processes on CPU); the same as `torchrun --nproc_per_node N -m stgraph.cli train ...`")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    p.set_defaults(func=run)


def launch_torchrun(nproc: int, argv: Sequence[str]) -> int:
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


def run(args) -> int:
    from stgraph.config import load_config
    from stgraph.training import train_model
    from stgraph.training.distributed import env_world_size
    from stgraph.training.job import check_train_inputs

    if args.nproc < 1:
        raise ValueError(f"--nproc must be ≥ 1, got {args.nproc}")
    config = with_cli_plugins(load_config(args.config, args.overrides), args)
    check_apart(args.out, args, [config], what="run folder", run_folder_ok=True)  # never onto, into or around an input
    check_train_inputs(config, args.out, force=args.force, resume=args.resume)  # before reading any slide
    from stgraph.models import model_spec

    if args.nproc > 1 and not model_spec(config).trainer:
        raise ValueError(f"--nproc {args.nproc}: model.kind {config.model.kind} is fitted in one call on one process "
                         f"(no Trainer steps to share): {args.nproc} processes would fit the same model "
                         f"{args.nproc} times; drop --nproc")
    if args.nproc > 1:
        if env_world_size() > 1:
            raise ValueError("--nproc inside a torchrun job: give one or the other")
        import torch

        from stgraph.utils import resolve_device

        if resolve_device(config.train.device).type == "cuda" and args.nproc > torch.cuda.device_count():
            raise ValueError(f"--nproc {args.nproc} on a machine with {torch.cuda.device_count()} GPU(s): one "
                             "process per GPU, or train.device=cpu for gloo processes on the CPU")
        return launch_torchrun(args.nproc, args.argv)
    slides = read_many(args)
    trained = train_model(config, slides, out=args.out, force=args.force, resume=args.resume)
    import torch.distributed as dist

    rank = 0
    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank()
        dist.destroy_process_group()
    if rank != 0:
        return 0  # rank 0 reports
    world = f" in {env_world_size()} processes" if env_world_size() > 1 else ""
    from stgraph.models import model_spec

    if not model_spec(config).trainer:  # one fit: report what it chose, there are no Trainer epochs
        chosen = ", ".join(f"{k} {v}" for k, v in trained.model.choices.items())
        how = "fitted" + (f" ({chosen})" if chosen else "")
    else:
        how = f"best epoch {trained.result.best_epoch if trained.result else -1}"
    print(f"trained {config.name} on {len(slides)} slide(s){world}; {how}; run folder: {args.out}")
    return 0
