"""Training: prepared slides, the trainer loop, and the end-to-end training job."""
from ..run import (CheckpointError, PreparedSlide, Preprocessor, Run, compute_image_features, fit_preprocessor,
                   load_checkpoint, prepare_slide)
from .run import TrainedRun, build_reference, train_model
from .trainer import Trainer, TrainResult
from .cohort import train_cohort

__all__ = [
    "CheckpointError",
    "PreparedSlide",
    "Preprocessor",
    "Run",
    "TrainResult",
    "TrainedRun",
    "Trainer",
    "build_reference",
    "compute_image_features",
    "fit_preprocessor",
    "load_checkpoint",
    "prepare_slide",
    "train_model",
    "train_cohort",
]
