"""Fitted preprocessing, below both training and inference: one slide as arrays (:class:`PreparedSlide`),
the preprocessing fitted on training slides (:class:`Preprocessor`), embedding a slide with a model, and the
physical resolution a run was trained at (:mod:`.resolution`). The run folder is :mod:`stgraph.runfolder`."""
from .embed import embed_slide, embed_slides
from .prepare import PreparedSlide, Preprocessor, compute_image_features, fit_preprocessor, prepare_slide

__all__ = [
    "PreparedSlide",
    "Preprocessor",
    "compute_image_features",
    "embed_slide",
    "embed_slides",
    "fit_preprocessor",
    "prepare_slide",
]
