"""The configs that ship with stgraph (``configs/`` in the repository, installed as ``stgraph.configs``).

``load_config("stgraph")``, ``stgraph train --config cpu/bleep``: a name that is not an existing file is
looked up among the shipped configs (``<name>`` or ``<name>.yaml`` under the package's ``configs`` folder),
so the published methods work from any folder and from an installed wheel. An existing file path always
wins over a shipped name.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["shipped_dir", "find_config", "list_configs", "describe"]


def shipped_dir() -> Path:
    """The folder holding the shipped YAML configs."""
    try:
        from importlib.resources import files

        return Path(str(files("stgraph.configs")))
    except (ImportError, ModuleNotFoundError, TypeError):
        # An editable install made before configs became package data: the source tree's configs/.
        return Path(__file__).resolve().parents[2] / "configs"


def find_config(name_or_path: str | Path) -> Path:
    """An existing file as given, else the shipped config of that name (``stgraph``, ``cpu/bleep``,
    ``cpu/bleep.yaml``, ``configs/cpu/bleep.yaml``). Raises ``FileNotFoundError`` naming both places."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    text = str(name_or_path).replace("\\", "/")
    if text.startswith("configs/"):
        text = text[len("configs/"):]
    root = shipped_dir()
    for candidate in (root / text, root / f"{text}.yaml"):
        if candidate.is_file() and candidate.suffix in (".yaml", ".yml"):
            return candidate
    names = ", ".join(name for name, _ in list_configs())
    raise FileNotFoundError(f"config file not found: {path}, and no shipped config of that name "
                            f"(`stgraph configs` lists them: {names})")


def describe(path: Path, width: int = 100) -> str:
    """A config's one-line description: the first sentence of its leading comment block, cut at ``width``
    characters (on a word boundary, with an ellipsis)."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(lines)
    cut = text.find(". ")
    if cut > 0:
        text = text[:cut + 1]
    if len(text) > width:
        text = text[:width - 1].rsplit(" ", 1)[0].rstrip(",;:") + "…"
    return text


def list_configs() -> list[tuple[str, str]]:
    """``(name, description)`` of every shipped config, sorted by name (``stgraph``, ``cpu/bleep``, ...)."""
    root = shipped_dir()
    out = []
    for path in sorted(root.rglob("*.yaml")):
        out.append((path.relative_to(root).with_suffix("").as_posix(), describe(path)))
    return out
