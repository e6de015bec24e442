"""Model compositions: image encoders, spot encoders, and the two-branch contrastive model."""
from .contrastive import BranchOutput, ContrastiveSTModel
from .factory import MODELS, create_image_encoder, create_model
from .image_encoders import IMAGE_ENCODERS, TimmImageEncoder
from ..registry import Registry
from .spot_encoders import SPOT_ENCODERS, create_spot_encoder

__all__ = [
    "BranchOutput",
    "ContrastiveSTModel",
    "IMAGE_ENCODERS",
    "MODELS",
    "Registry",
    "SPOT_ENCODERS",
    "TimmImageEncoder",
    "create_image_encoder",
    "create_model",
    "create_spot_encoder",
]
