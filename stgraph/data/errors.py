"""Errors raised by the data layer.

Missing inputs raise :class:`FileNotFoundError` (the message names the path and what it should be); files
that exist but hold bad content raise :class:`SlideFormatError` (a :class:`ValueError`; the message names
the file and the problem).
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import StgraphError

__all__ = ["SlideFormatError", "missing_file", "require_file"]


class SlideFormatError(StgraphError, ValueError):
    """A slide file exists but its content does not follow the expected format."""


def missing_file(path: str | os.PathLike, what: str) -> FileNotFoundError:
    """A :class:`FileNotFoundError` whose message names ``path`` and what it should have been."""
    return FileNotFoundError(f"{what} not found: {Path(path)}")


def require_file(path: str | os.PathLike, what: str) -> Path:
    """Return ``path`` as a :class:`Path`, or raise :func:`missing_file` when it is not a file."""
    path = Path(path)
    if not path.is_file():
        raise missing_file(path, what)
    return path
