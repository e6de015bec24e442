"""Packaging: every subpackage is installed, and the CLI is importable as stgraph.cli."""
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {"stgraph." + ".".join(p.parent.relative_to(REPO / "stgraph").parts)
             for p in (REPO / "stgraph").rglob("__init__.py") if p.parent != REPO / "stgraph"}
    assert found | {"stgraph", "stgraph.cli"} == listed
    assert config["package-dir"]["stgraph.cli"] == "cli" and (REPO / "cli" / "main.py").is_file()
