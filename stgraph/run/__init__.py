"""The run layer, below both training and inference: one slide as arrays (:class:`PreparedSlide`), fitted
preprocessing, embedding a slide, and a trained :class:`Run` with its folder (save / load / checkpoints)."""
from .embed import embed_slide, embed_slides
from .folder import RUN_FILES, CheckpointError, ModelFolderError, Run, load_checkpoint, load_run, save_model
from .prepare import PreparedSlide, Preprocessor, compute_image_features, fit_preprocessor, prepare_slide

__all__ = [
    "RUN_FILES",
    "CheckpointError",
    "ModelFolderError",
    "PreparedSlide",
    "Preprocessor",
    "Run",
    "compute_image_features",
    "embed_slide",
    "embed_slides",
    "fit_preprocessor",
    "load_checkpoint",
    "load_run",
    "prepare_slide",
    "save_model",
]
