"""``create_model``: build the configured model (the single entry point, like timm's).

``model.kind`` picks the class from :data:`~stgraph.models.base.MODELS`; each class declares what it needs
and does (:class:`~stgraph.models.base.ModelSpec`) and builds itself with ``from_config(config, spot_in_dim,
image_encoder)``. The shipped kinds, one file each: ``contrastive`` (the two-branch model of
BLEEP/HECLIP/mclSTExp/ST-GCHB, :mod:`.contrastive`), ``ridge`` (closed-form regression on frozen features,
:mod:`.ridge`), ``spot_graph`` (learned graph regression on frozen features, :mod:`.spot_graph`); a plugin
registers its own class with ``@MODELS.register("my_kind")``.
"""
from __future__ import annotations

from torch import nn

from .base import MODELS, ModelSpec
from .contrastive import ContrastiveSTModel  # noqa: F401  (registers "contrastive")
from .image_encoders import IMAGE_ENCODERS, TimmImageEncoder
from .ridge import RidgeSTModel  # noqa: F401  (registers "ridge")
from .spot_graph import SpotGraphSTModel  # noqa: F401  (registers "spot_graph")

__all__ = ["MODELS", "create_model", "create_image_encoder", "model_class", "model_spec"]


def model_class(config_or_kind) -> type:
    """The class registered for ``model.kind`` (a :class:`~stgraph.config.Config` or a kind name)."""
    kind = config_or_kind if isinstance(config_or_kind, str) else config_or_kind.model.kind
    return MODELS.get(kind)


def model_spec(config_or_kind) -> ModelSpec:
    """What the config's (or a kind name's) model needs and does: its class's :class:`ModelSpec`."""
    return model_class(config_or_kind).spec


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
