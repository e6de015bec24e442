"""Reference store, kNN imputation, and prediction of new slides."""
from ..retrieval import (FaissKNN, KNNBackend, ReferenceStore, ReferenceStoreError, TorchKNN, aggregate,
                         create_knn_backend, impute)
from ..run import ModelFolderError, Run, embed_slide, embed_slides, load_run
from .predict import (MIN_GENE_OVERLAP, GeneOverlapError, LoadedModel, extend_reference, predict_slide,
                      write_prediction)

__all__ = [
    "FaissKNN",
    "KNNBackend",
    "LoadedModel",
    "ModelFolderError",
    "ReferenceStore",
    "ReferenceStoreError",
    "Run",
    "TorchKNN",
    "aggregate",
    "create_knn_backend",
    "embed_slide",
    "embed_slides",
    "extend_reference",
    "GeneOverlapError",
    "MIN_GENE_OVERLAP",
    "impute",
    "load_run",
    "predict_slide",
    "write_prediction",
]
