"""Training objectives: contrastive alignment (CLIP, BLEEP, HECLIP), HSIC bottleneck, DGI and their sum."""
from .composite import CompositeLoss
from .contrastive import (BLEEPLoss, CLIPLoss, HECLIPLoss, bleep_loss, clip_loss, heclip_loss,
                          soft_cross_entropy)
from .dgi import dgi_loss
from .objective import Objective
from .hsic import HSICBottleneck, center_kernel, gaussian_kernel, hsic, hsic_bottleneck, nhsic
from .registry import LOSSES, UnknownLossError, create_loss, loss_names, register_loss

__all__ = [
    "clip_loss",
    "bleep_loss",
    "heclip_loss",
    "soft_cross_entropy",
    "CLIPLoss",
    "BLEEPLoss",
    "HECLIPLoss",
    "gaussian_kernel",
    "center_kernel",
    "hsic",
    "nhsic",
    "hsic_bottleneck",
    "HSICBottleneck",
    "dgi_loss",
    "LOSSES",
    "register_loss",
    "create_loss",
    "loss_names",
    "UnknownLossError",
    "CompositeLoss",
    "Objective",
]
