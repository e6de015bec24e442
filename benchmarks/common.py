"""Shared bits of the benchmark scripts: machine description and result writing."""
from __future__ import annotations

import json
import os
import platform
import resource
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
# The shared data and weights: beside the repository, or wherever $STGRAPH_SHARED points (a worktree).
SHARED = Path(os.environ.get("STGRAPH_SHARED") or Path(__file__).resolve().parents[2] / "shared")


def machine() -> dict:
    """Platform, CPU and library versions, for the results files."""
    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((l.split(":", 1)[1].strip() for l in fh if l.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


#: The load average when this process started (other work on the machine skews timings; recorded beside them).
LOAD_AT_START = os.getloadavg()


def _commit() -> str:
    """The checked-out commit, ``+dirty`` with uncommitted changes to anything but ``benchmarks/results`` (which
    the benchmarks themselves write)."""
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)benchmarks/results"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


#: The code that ran: the commit when this process started (not when it ends: a long benchmark should not be
#: marked dirty by edits made while it ran).
COMMIT_AT_START = _commit()


def provenance() -> dict:
    """What a result file records besides its figures: the command that wrote it, the commit it ran (as the
    benchmark started) and the machine's load average at the start and at the end."""
    import sys

    return {"command": " ".join(["python", *sys.argv]), "commit": COMMIT_AT_START,
            "load_at_start": [round(x, 2) for x in LOAD_AT_START],
            "load_at_end": [round(x, 2) for x in os.getloadavg()],
            "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "STGRAPH_WEIGHTS") if k in os.environ}}


def write_results(name: str, payload: dict) -> Path:
    """``benchmarks/results/<name>.json``: ``machine``, ``provenance`` (command, commit, load) and the payload."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"machine": machine(), "provenance": provenance(), **payload}, indent=2, default=float))
    os.replace(tmp, path)
    return path
