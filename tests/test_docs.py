"""The docs are tests: every runnable code block of README.md and docs/*.md runs as written.

Each ``bash`` or ``python`` block is preceded by a marker saying how it is tested::

    <!-- doc-test: fast -->                  runs in `make test` (tiny, synthetic)
    <!-- doc-test: slow -->                  runs in `make test-slow` (the real HER2+ sections)
    <!-- doc-test: skip: <why> -->           not run, for the reason given (hardware, the user's own data, ...)

A block without a marker fails :func:`test_every_code_block_says_how_it_is_tested`, so a new example cannot
escape. The blocks of one document run in order in one folder laid out as a checkout (``configs``,
``examples``, ``Makefile``, ``.venv`` linked, ``../shared`` beside it; ``stgraph`` on the PATH), bash blocks
first as shell scripts, then the document's Python blocks together as one script (they build on each other);
each must exit 0, and every ``--out`` path a bash block names must exist afterwards.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import HER2ST, MOBILENET, REPO, doc_workdir, require_shared

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKER = re.compile(r"<!--\s*doc-test:\s*(fast|slow|skip)(?::\s*(.*?))?\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")


def code_blocks(path: Path) -> list[dict]:
    """Fenced blocks of a Markdown file: ``{"lang", "code", "line", "mode", "why"}`` (mode from the marker on
    the line before the fence, ``None`` without one)."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        marker = MARKER.search(lines[start - 1]) if start else None
        blocks.append({"lang": lang, "code": "\n".join(lines[start + 1:j]), "line": start + 1,
                       "mode": marker.group(1) if marker else None, "why": marker.group(2) if marker else None})
        i = j + 1
    return blocks


def test_every_code_block_says_how_it_is_tested():
    unmarked = [f"{p.relative_to(REPO)}:{b['line']}" for p in DOCS for b in code_blocks(p)
                if b["lang"] in ("bash", "python", "sh") and b["mode"] is None]
    assert not unmarked, f"code blocks without a <!-- doc-test: ... --> marker: {unmarked}"
    reasonless = [f"{p.relative_to(REPO)}:{b['line']}" for p in DOCS for b in code_blocks(p)
                  if b["mode"] == "skip" and not b["why"]]
    assert not reasonless, f"skipped blocks must say why: {reasonless}"


def _env(tmp_path: Path) -> dict:
    venv_bin = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}", "MPLBACKEND": "Agg",
            "OMP_NUM_THREADS": "1", "STGRAPH_WEIGHTS": str(MOBILENET.parent), "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO / "examples" / "plugin_variant"),
                                           os.environ.get("PYTHONPATH", "")]),
            "STGRAPH_CACHE_DIR": str(tmp_path.parent / "doc-cache")}


def _outs(code: str) -> list[str]:
    return re.findall(r"--out\s+(\S+)", code)


def _run_document(doc: Path, mode: str, tmp_path: Path) -> None:
    blocks = [b for b in code_blocks(doc) if b["mode"] == mode and b["lang"] in ("bash", "sh", "python")]
    if not blocks:
        pytest.skip(f"{doc.name} has no {mode} blocks")
    work = doc_workdir(tmp_path)
    env = _env(tmp_path)
    for block in [b for b in blocks if b["lang"] != "python"]:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", block["code"]], cwd=work, env=env,
                              capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, f"{doc.name}:{block['line']}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        for out in _outs(block["code"]):
            assert (work / out).exists(), f"{doc.name}:{block['line']}: --out {out} was not written"
    python = "\n\n".join(b["code"] for b in blocks if b["lang"] == "python")
    if python:
        done = subprocess.run([sys.executable, "-c", python], cwd=work, env=env, capture_output=True, text=True,
                              timeout=1800)
        assert done.returncode == 0, f"{doc.name} (python blocks)\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


@pytest.mark.parametrize("doc", [d.name for d in DOCS])
def test_fast_blocks_run(doc, tmp_path):
    _run_document(next(d for d in DOCS if d.name == doc), "fast", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("doc", [d.name for d in DOCS])
def test_slow_blocks_run(doc, tmp_path):
    require_shared(HER2ST)
    require_shared(MOBILENET)
    _run_document(next(d for d in DOCS if d.name == doc), "slow", tmp_path)
