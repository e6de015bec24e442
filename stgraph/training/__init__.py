"""Training: the trainer loop and the end-to-end training job (:func:`train_model` writes a run folder).

The preprocessing and run-folder names training users need are gathered here too."""
from ..preprocess import PreparedSlide, Preprocessor, compute_image_features, fit_preprocessor, prepare_slide
from ..runfolder import CheckpointError, Run, load_checkpoint
from .job import build_reference, train_model
from .trainer import Trainer, TrainResult
from .cohort import train_cohort

__all__ = [
    "CheckpointError",
    "PreparedSlide",
    "Preprocessor",
    "Run",
    "TrainResult",
    "Trainer",
    "build_reference",
    "compute_image_features",
    "fit_preprocessor",
    "load_checkpoint",
    "prepare_slide",
    "train_model",
    "train_cohort",
]
