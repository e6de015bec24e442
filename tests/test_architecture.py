"""Architecture rules: imports flow one way, neither the packages nor the modules form an import circle,
importing plots leaves matplotlib's backend alone."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "stgraph"
CLI = REPO / "cli"  # installed as stgraph.cli


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("package, forbidden", [("stgraph.training", "stgraph.inference"),
                                                ("stgraph.inference", "stgraph.training")])
def test_training_and_inference_do_not_import_each_other(package, forbidden):
    loaded = _loaded_after(f"import {package}")
    assert package in loaded
    assert not {m for m in loaded if m == forbidden or m.startswith(forbidden + ".")}


def test_importing_pl_leaves_the_matplotlib_backend_alone():
    code = ("import matplotlib; matplotlib.use('svg'); import stgraph.pl, stgraph.cli.main; "
            "print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "svg"


def _subpackage(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "cli":
        parts = ["stgraph", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _source_files() -> list[Path]:
    return sorted(PKG.rglob("*.py")) + sorted(CLI.rglob("*.py"))


def _imports(path: Path, top_level_only: bool, modules: frozenset = frozenset()) -> set[str]:
    """Absolute stgraph modules a file imports (all imports, or only those run at import time).

    ``from package import name`` names the module ``package.name`` when that is one of ``modules``."""
    tree = ast.parse(path.read_text())
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("stgraph"):
                subs = {f"{target}.{a.name}" for a in node.names} & modules
                found |= subs if len(subs) == len(node.names) else subs | {target}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("stgraph")}
    return found


def _subpackage_graph(top_level_only: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PKG.rglob("*.py"):
        src = _subpackage(_module_name(path))
        if src == "stgraph":
            continue  # the package's own __init__ gathers everything
        for target in _imports(path, top_level_only):
            dst = _subpackage(target)
            if dst not in (src, "stgraph", "stgraph.cli"):
                graph.setdefault(src, set()).add(dst)
    return graph


def _find_cycle(graph: dict[str, set[str]]):
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if not state.get(nxt):
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if not state.get(node):
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_subpackages_form_no_import_circle():
    """Counting imports inside functions too: the layers of docs/architecture.md form a DAG."""
    cycle = _find_cycle(_subpackage_graph(top_level_only=False))
    assert cycle is None, " → ".join(cycle)


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


@pytest.mark.parametrize("lower, upper", [("stgraph.preprocess", "stgraph.runfolder"),
                                          ("stgraph.preprocess", "stgraph.training"),
                                          ("stgraph.preprocess", "stgraph.inference"),
                                          ("stgraph.runfolder", "stgraph.training"),
                                          ("stgraph.runfolder", "stgraph.inference"),
                                          ("stgraph.retrieval", "stgraph.preprocess"),
                                          ("stgraph.trust", "stgraph.runfolder"),
                                          ("stgraph.trust", "stgraph.training"),
                                          ("stgraph.trust", "stgraph.inference"),
                                          ("stgraph.data", "stgraph.preprocess")])
def test_layers_import_only_the_layers_below(lower, upper):
    """docs/architecture.md's order: preprocess, trust → runfolder → training | inference (every import counted)."""
    graph = _subpackage_graph(top_level_only=False)
    assert lower in graph and upper not in _reachable(graph, lower)


def _module_graph() -> dict[str, set[str]]:
    """Module → the stgraph modules it imports, every import counted (also those inside functions: a lazy
    import hides a circle from the interpreter but not from the reader). An edge goes to the module named
    (``from .image import x`` → ``stgraph.data.image``), not to the packages above it whose ``__init__``
    Python runs first: a package's ``__init__`` is a node of its own, with the edges of its own imports."""
    files = {_module_name(p): p for p in _source_files()}
    modules = frozenset(files)
    return {name: (_imports(path, top_level_only=False, modules=modules) & modules) - {name}
            for name, path in files.items()}


def test_modules_form_no_import_circle():
    graph = _module_graph()
    assert {"stgraph.data.image", "stgraph.data.patches", "stgraph.cli.main"} <= set(graph)
    cycle = _find_cycle(graph)
    assert cycle is None, " → ".join(cycle)


def test_the_module_graph_sees_a_circle_between_two_modules(tmp_path, monkeypatch):
    """The check is able to fail: two modules of one package importing each other (one lazily) are found."""
    pkg = tmp_path / "stgraph" / "toy"
    pkg.mkdir(parents=True)
    (tmp_path / "stgraph" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("from .b import g\n\ndef f():\n    return g()\n")
    (pkg / "b.py").write_text("def g():\n    from .a import f\n    return f\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PKG", tmp_path / "stgraph")
    monkeypatch.setattr(sys.modules[__name__], "CLI", tmp_path / "cli")
    cycle = _find_cycle(_module_graph())
    assert cycle is not None and set(cycle) == {"stgraph.toy.a", "stgraph.toy.b"}


def test_anndata_keys_come_from_the_keys_module():
    """No ``adata.obsm["..."]``-style literal outside stgraph/keys.py: every key is a ``Key`` constant."""
    import re

    pattern = re.compile(r'\.(obs|obsm|obsp|layers|uns|var)(\.get\(|\[)\s*["\']')
    offenders = [f"{p.relative_to(REPO)}:{i}" for p in _source_files()
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if pattern.search(line) and not line.lstrip().startswith(("#", '"', "'", "f\"", "raise"))
                 and "f\"" not in line and "f'" not in line]
    assert not offenders, offenders


def test_one_slide_id_rule():
    import anndata
    import numpy as np
    import pandas as pd

    from stgraph.data.slide_id import set_slide_id, slide_id_of

    ad = anndata.AnnData(np.zeros((3, 1), dtype=np.float32))
    assert slide_id_of(ad, default="q") == "q"
    with pytest.raises(ValueError, match="cannot tell the slide id"):
        slide_id_of(ad)
    ad.uns["spatial"] = {"LIB": {}}
    assert slide_id_of(ad) == "LIB"
    set_slide_id(ad, "S1")
    assert slide_id_of(ad) == "S1" and isinstance(ad.obs["slide_id"].dtype, pd.CategoricalDtype)
