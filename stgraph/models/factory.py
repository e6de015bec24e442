"""``create_model``: build the configured model (the single entry point, like timm's)."""
from __future__ import annotations

from functools import partial

from .contrastive import ContrastiveSTModel
from .image_encoders import TimmImageEncoder
from .spot_encoders import create_spot_encoder

__all__ = ["create_model", "create_image_encoder"]


def create_image_encoder(config, pretrained: bool | None = None) -> TimmImageEncoder:
    """The configured timm backbone; ``pretrained=False`` skips weight loading (e.g. before a checkpoint load)."""
    cfg = config.model.image_encoder
    use_pretrained = cfg.pretrained if pretrained is None else pretrained
    return TimmImageEncoder(
        backbone=cfg.backbone,
        pretrained=use_pretrained,
        weights=cfg.weights if use_pretrained else None,
        freeze=cfg.freeze,
        architecture=cfg.architecture,
        model_kwargs=dict(cfg.model_kwargs or {}),
        input_size=cfg.input_size,
    )


def create_model(config, spot_in_dim: int, pretrained: bool | None = None) -> ContrastiveSTModel:
    """Build :class:`ContrastiveSTModel` from a :class:`~stgraph.config.Config` (its ``model`` section).

    Parameters
    ----------
    config
        Validated config.
    spot_in_dim
        Width of the spot-branch input: the number of genes, or ``model.pca_components`` with PCA input.
    pretrained
        Override ``model.image_encoder.pretrained`` (``False`` when weights come from a checkpoint).
    """
    m = config.model
    if m.name == "ridge":
        from .ridge import RidgeSTModel

        return RidgeSTModel(config, create_image_encoder(config, pretrained))
    if m.name == "spot_graph":
        from .spot_graph import SpotGraphSTModel

        return SpotGraphSTModel(config, create_image_encoder(config, pretrained))
    return ContrastiveSTModel(
        spot_in_dim,
        create_image_encoder(config, pretrained),
        spot_encoder=partial(create_spot_encoder, cfg=m.spot_encoder),
        embed_dim=m.embed_dim,
        image_dgi_dim=m.image_dgi.hidden_dim if m.image_dgi.enabled else None,
        spot_dgi_dim=m.spot_dgi.hidden_dim if m.spot_dgi.enabled else None,
        image_head_dropout=m.image_head_dropout,
        spot_head_dropout=m.spot_head_dropout,
    )
