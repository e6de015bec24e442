"""The reference store: moved to :mod:`stgraph.retrieval.reference` (below training and inference); this path re-exports it."""
from ..retrieval.reference import *  # noqa: F401,F403
from ..retrieval.reference import __all__  # noqa: F401
