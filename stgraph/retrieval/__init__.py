"""Retrieval below training and inference: the reference store (versioned HDF5), kNN backends and imputation."""
from .impute import aggregate, impute
from .knn import FaissKNN, KNNBackend, TorchKNN, create_knn_backend
from .reference import ReferenceStore, ReferenceStoreError

__all__ = ["FaissKNN", "KNNBackend", "ReferenceStore", "ReferenceStoreError", "TorchKNN", "aggregate",
           "create_knn_backend", "impute"]
