"""Where stgraph keeps its caches: a user cache directory, never the working directory by default."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

__all__ = ["user_cache_dir", "resolve_cache_dir", "folder_size"]


def user_cache_dir(path: Optional[Union[str, os.PathLike]] = None) -> Path:
    """The stgraph cache folder: ``path`` if given, else ``$STGRAPH_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/stgraph``, else ``~/.cache/stgraph``."""
    if path:
        return Path(path).expanduser()
    if os.environ.get("STGRAPH_CACHE_DIR"):
        return Path(os.environ["STGRAPH_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "stgraph"


def resolve_cache_dir(value: Optional[Union[str, os.PathLike]]) -> Optional[Path]:
    """``data.cache_dir`` → a folder: ``"auto"`` is :func:`user_cache_dir`, ``None``/``""``/``"none"``
    disables caching, anything else is that folder."""
    if value is None or str(value).strip().lower() in ("", "none", "null", "false"):
        return None
    if str(value) == "auto":
        return user_cache_dir()
    return Path(value).expanduser()


def folder_size(path: Union[str, os.PathLike]) -> int:
    """Total bytes of the files under ``path`` (0 when it does not exist)."""
    path = Path(path)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0
