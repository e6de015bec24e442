"""``create_model``: build the configured model (the single entry point, like timm's).

``model.kind`` picks the builder from :data:`MODELS`; a builder is ``(config, spot_in_dim, image_encoder)
-> nn.Module``. ``contrastive`` is the two-branch model of BLEEP/HECLIP/mclSTExp/ST-GCHB, ``ridge`` the
closed-form regression on frozen features; a plugin registers its own kind with
``@MODELS.register("my_kind")``.
"""
from __future__ import annotations

from functools import partial

from torch import nn

from ..registry import Registry
from .contrastive import ContrastiveSTModel
from .image_encoders import IMAGE_ENCODERS, TimmImageEncoder
from .spot_encoders import create_spot_encoder

__all__ = ["MODELS", "create_model", "create_image_encoder"]

#: ``model.kind`` → builder ``(config, spot_in_dim, image_encoder) -> nn.Module``.
MODELS: Registry[nn.Module] = Registry("model kind", inputs=("config", "spot_in_dim", "image_encoder"))


def create_image_encoder(config, pretrained: bool | None = None) -> TimmImageEncoder:
    """The configured image encoder (``IMAGE_ENCODERS[model.image_encoder.name]``, timm by default);
    ``pretrained=False`` skips weight loading (e.g. before a checkpoint load)."""
    cfg = config.model.image_encoder
    use_pretrained = cfg.pretrained if pretrained is None else pretrained
    return IMAGE_ENCODERS.create(
        cfg.name,
        backbone=cfg.backbone,
        pretrained=use_pretrained,
        weights=cfg.weights if use_pretrained else None,
        freeze=cfg.freeze,
        architecture=cfg.architecture,
        model_kwargs=dict(cfg.model_kwargs or {}),
        input_size=cfg.input_size,
        **dict(cfg.options or {}),
    )


@MODELS.register("contrastive")
def contrastive(config, spot_in_dim: int, image_encoder: nn.Module) -> ContrastiveSTModel:
    """Two-branch contrastive model (image and spot encoders, optional DGI, projection heads); kNN retrieval."""
    m = config.model
    return ContrastiveSTModel(
        spot_in_dim,
        image_encoder,
        spot_encoder=partial(create_spot_encoder, name=m.spot_encoder.name, options=m.spot_encoder.options),
        embed_dim=m.embed_dim,
        image_dgi_dim=m.image_dgi.hidden_dim if m.image_dgi.enabled else None,
        spot_dgi_dim=m.spot_dgi.hidden_dim if m.spot_dgi.enabled else None,
        image_head_dropout=m.image_head_dropout,
        spot_head_dropout=m.spot_head_dropout,
    )


@MODELS.register("ridge")
def ridge(config, spot_in_dim: int, image_encoder: nn.Module) -> nn.Module:
    """Closed-form ridge from cached (context) backbone features to expression (``model.ridge``); no kNN."""
    from .ridge import RidgeSTModel

    return RidgeSTModel(config, image_encoder)


@MODELS.register("spot_graph")
def spot_graph(config, spot_in_dim: int, image_encoder: nn.Module) -> nn.Module:
    """Learned regression from cached features with spot-graph neighbours (``model.spot_graph``); no kNN."""
    from .spot_graph import SpotGraphSTModel

    return SpotGraphSTModel(config, image_encoder)


def create_model(config, spot_in_dim: int, pretrained: bool | None = None) -> nn.Module:
    """Build the model ``model.kind`` names from a :class:`~stgraph.config.Config`.

    Parameters
    ----------
    config
        Validated config.
    spot_in_dim
        Width of the spot-branch input: the number of genes, or ``model.pca_components`` with PCA input.
    pretrained
        Override ``model.image_encoder.pretrained`` (``False`` when weights come from a checkpoint).
    """
    return MODELS.create(config.model.kind, config=config, spot_in_dim=spot_in_dim,
                         image_encoder=create_image_encoder(config, pretrained))
