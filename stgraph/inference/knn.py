"""K-nearest-neighbour backends: moved to :mod:`stgraph.retrieval.knn` (below training and inference); this path re-exports it."""
from ..retrieval.knn import *  # noqa: F401,F403
from ..retrieval.knn import __all__  # noqa: F401
