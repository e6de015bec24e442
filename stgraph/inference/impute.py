"""KNN imputation: moved to :mod:`stgraph.retrieval.impute` (below training and inference); this path re-exports it."""
from ..retrieval.impute import *  # noqa: F401,F403
from ..retrieval.impute import __all__  # noqa: F401
