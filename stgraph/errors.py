"""The base of every stgraph error.

Each specific error also derives from the builtin it always derived from (``ValueError``, ``KeyError``,
``RuntimeError``), so ``except ValueError`` keeps working; the CLI catches :class:`StgraphError` (and missing
or existing files) and prints one line instead of a traceback.
"""
from __future__ import annotations

__all__ = ["StgraphError"]


class StgraphError(Exception):
    """Base class of the errors stgraph raises on bad input (files, configs, checkpoints, names)."""
