"""How long the README's test commands take: ``make test`` (not slow) and ``make test-slow``, timed as run.

    python benchmarks/test_suite.py [--suite fast slow]   # → benchmarks/results/test_suite.json

Each suite runs the command its make target runs (``.venv/bin/python -m pytest -q`` and ``... -m slow``) in a
child process from the repository root; the wall time, the children's CPU time, the pass/skip/fail counts of
pytest's last line, the machine and its load before and after are recorded. Run it alone on the machine: the
README quotes these figures for ``make test``'s 4-minute budget.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SUITES = {"fast": [], "slow": ["-m", "slow"]}


def _counts(line: str) -> dict:
    return {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?)", line)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", nargs="+", default=["fast"], choices=list(SUITES))
    args = ap.parse_args(argv)
    python = REPO / ".venv" / "bin" / "python"
    path = RESULTS / "test_suite.json"
    result = json.loads(path.read_text()).get("suites", {}) if path.is_file() else {}
    for name in args.suite:
        cmd = [str(python if python.exists() else sys.executable), "-m", "pytest", "-q", *SUITES[name]]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        load = os.getloadavg()
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        last = [ln for ln in done.stdout.strip().splitlines() if ln.strip()][-1]
        result[name] = {"command": " ".join(["python", "-m", "pytest", "-q", *SUITES[name]]),
                        "make_target": "make test" if name == "fast" else "make test-slow",
                        "returncode": done.returncode, "wall_s": round(wall, 1),
                        "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
                        "summary": last, **_counts(last),
                        "load_before": [round(x, 2) for x in load],
                        "load_after": [round(x, 2) for x in os.getloadavg()]}
        print(f"{name}: {wall / 60:.1f} min wall — {last}", flush=True)
    write_results("test_suite", {"suites": result})
    return result


if __name__ == "__main__":
    main()
