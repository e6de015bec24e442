"""Model compositions: image encoders, spot encoders, and the two-branch contrastive model."""
from .contrastive import BranchOutput, ContrastiveSTModel
from .base import ModelSpec, STModel
from .factory import MODELS, create_image_encoder, create_model, model_class, model_spec
from .image_encoders import IMAGE_ENCODERS, TimmImageEncoder
from ..registry import Registry
from .spot_encoders import SPOT_ENCODERS, create_spot_encoder

__all__ = [
    "BranchOutput",
    "ContrastiveSTModel",
    "IMAGE_ENCODERS",
    "MODELS",
    "ModelSpec",
    "Registry",
    "STModel",
    "SPOT_ENCODERS",
    "TimmImageEncoder",
    "create_image_encoder",
    "create_model",
    "create_spot_encoder",
    "model_class",
    "model_spec",
]
