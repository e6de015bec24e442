"""Training: prepared slides, the trainer loop, and the end-to-end training job."""
from .prepare import PreparedSlide, Preprocessor, compute_image_features, fit_preprocessor, prepare_slide
from .run import TrainedRun, build_reference, train_model
from .trainer import CheckpointError, Trainer, TrainResult, load_checkpoint

__all__ = [
    "CheckpointError",
    "PreparedSlide",
    "Preprocessor",
    "TrainResult",
    "TrainedRun",
    "Trainer",
    "build_reference",
    "compute_image_features",
    "fit_preprocessor",
    "load_checkpoint",
    "prepare_slide",
    "train_model",
]
