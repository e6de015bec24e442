"""Prediction of new slides: load a run folder, embed, retrieve from its reference, write AnnData.

The reference store, kNN backends and imputation live in :mod:`stgraph.retrieval` (one place)."""
from ..preprocess import embed_slide, embed_slides
from ..runfolder import ModelFolderError, Run, load_run
from .predict import MIN_GENE_OVERLAP, GeneOverlapError, extend_reference, predict_slide, write_prediction

__all__ = [
    "GeneOverlapError",
    "MIN_GENE_OVERLAP",
    "ModelFolderError",
    "Run",
    "embed_slide",
    "embed_slides",
    "extend_reference",
    "load_run",
    "predict_slide",
    "write_prediction",
]
