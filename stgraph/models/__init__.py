"""Model compositions: image encoders, spot encoders, and the two-branch contrastive model."""
from .contrastive import BranchOutput, ContrastiveSTModel
from .factory import create_image_encoder, create_model
from .image_encoders import TimmImageEncoder
from ..registry import Registry
from .spot_encoders import SPOT_ENCODERS, create_spot_encoder

__all__ = [
    "BranchOutput",
    "ContrastiveSTModel",
    "Registry",
    "SPOT_ENCODERS",
    "TimmImageEncoder",
    "create_image_encoder",
    "create_model",
    "create_spot_encoder",
]
