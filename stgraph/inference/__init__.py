"""Reference store, kNN imputation, and prediction of new slides."""
from .embed import embed_slide, embed_slides
from .impute import aggregate, impute
from .knn import FaissKNN, KNNBackend, TorchKNN, create_knn_backend
from .predict import LoadedModel, ModelFolderError, extend_reference, load_run, predict_slide, write_prediction
from .reference import ReferenceStore, ReferenceStoreError

__all__ = [
    "FaissKNN",
    "KNNBackend",
    "LoadedModel",
    "ModelFolderError",
    "ReferenceStore",
    "ReferenceStoreError",
    "TorchKNN",
    "aggregate",
    "create_knn_backend",
    "embed_slide",
    "embed_slides",
    "extend_reference",
    "impute",
    "load_run",
    "predict_slide",
    "write_prediction",
]
