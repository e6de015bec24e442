"""Packaging: every subpackage is installed, and the CLI is importable as stgraph.cli."""
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {"stgraph." + ".".join(p.parent.relative_to(REPO / "stgraph").parts)
             for p in (REPO / "stgraph").rglob("__init__.py") if p.parent != REPO / "stgraph"}
    assert found | {"stgraph", "stgraph.cli", "stgraph.configs"} == listed
    assert config["package-dir"]["stgraph.cli"] == "cli" and (REPO / "cli" / "main.py").is_file()
    # The shipped configs are package data of stgraph.configs (the top-level configs/ folder).
    assert config["package-dir"]["stgraph.configs"] == "configs" and (REPO / "configs" / "__init__.py").is_file()
    assert "**/*.yaml" in config["package-data"]["stgraph.configs"]


@pytest.mark.parametrize("target", ["test", "demo"])
def test_make_targets_build_the_venv_when_missing(tmp_path, target):
    """`make test` / `make demo` work as the very first command: they build .venv when it is missing."""
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("no make")
    repo = Path(__file__).resolve().parents[1]
    missing = subprocess.run(["make", "-n", target, f"VENV={tmp_path / 'venv'}"], cwd=repo,
                             capture_output=True, text=True)
    assert missing.returncode == 0 and "-m venv" in missing.stdout and 'pip install -e ".[dev]"' in missing.stdout
    setup = subprocess.run(["make", "-n", "setup"], cwd=repo, capture_output=True, text=True)
    assert setup.returncode == 0 and "pip install -e" in setup.stdout


def test_make_test_leaves_slow_tests_to_ci():
    """`make test` (plain pytest) deselects the slow tests; `.ci/run` runs them too, through `make test-slow`."""
    import re
    import shlex
    import shutil
    import subprocess

    opts = shlex.split(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["addopts"])
    assert opts[opts.index("-m") + 1] == "not slow"
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test(?!-)", ci, re.M) and re.search(r"^make test-slow", ci, re.M)
    if shutil.which("make") is None:
        pytest.skip("no make")
    dry = subprocess.run(["make", "-n", "test-slow"], cwd=REPO, capture_output=True, text=True)
    assert dry.returncode == 0 and "pytest -q -m slow" in dry.stdout
