"""Retrieval below training and inference: the reference store (versioned HDF5), kNN backends and imputation."""
from .impute import AGGREGATIONS, WEIGHT_DISTANCES, aggregate, impute
from .knn import KNN_BACKENDS, SIMILARITIES, FaissKNN, KNNBackend, TorchKNN, create_knn_backend, similarity
from .reference import ReferenceStore, ReferenceStoreError

__all__ = ["AGGREGATIONS", "KNN_BACKENDS", "SIMILARITIES", "WEIGHT_DISTANCES", "similarity",
           "FaissKNN", "KNNBackend", "ReferenceStore", "ReferenceStoreError", "TorchKNN", "aggregate",
           "create_knn_backend", "impute"]
