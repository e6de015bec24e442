"""``create_model``: build the configured model (the single entry point, like timm's)."""
from __future__ import annotations

from .contrastive import ContrastiveSTModel
from .image_encoders import TimmImageEncoder

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
    )


def validate_model_config(config) -> None:
    """Cross-field checks that the dataclass types cannot express."""
    m, t = config.model, config.train
    graph = m.image_dgi.enabled or m.spot_dgi.enabled
    if graph and t.batching != "slide":
        raise ValueError("DGI encoders run over a whole slide graph: set train.batching=slide")
    if m.image_encoder.cache_features and m.image_encoder.freeze != "all":
        raise ValueError("model.image_encoder.cache_features needs model.image_encoder.freeze=all")
    ctx = m.image_encoder.context_scale is not None or m.image_encoder.neighbour_context
    if ctx and not m.image_encoder.cache_features:
        raise ValueError("model.image_encoder.context_scale / neighbour_context work on cached features: "
                         "set model.image_encoder.cache_features=true (and freeze=all)")
    if m.image_encoder.context_scale is not None and not m.image_encoder.context_scale > 0:
        raise ValueError(f"model.image_encoder.context_scale must be > 0, got {m.image_encoder.context_scale}")
    if m.name == "ridge":
        if not m.image_encoder.cache_features:
            raise ValueError("model.name=ridge fits on cached backbone features: set "
                             "model.image_encoder.cache_features=true and freeze=all")
        if config.inference.reference != "image":
            raise ValueError("model.name=ridge has no spot branch: set inference.reference=image")
    if not 0.0 <= config.inference.smoothing <= 1.0:
        raise ValueError(f"inference.smoothing must be in [0, 1], got {config.inference.smoothing}")


def create_model(config, spot_in_dim: int, pretrained: bool | None = None) -> ContrastiveSTModel:
    """Build :class:`ContrastiveSTModel` from a :class:`~stgraph.config.Config`.

    Parameters
    ----------
    config
        Validated config.
    spot_in_dim
        Width of the spot-branch input: the number of genes, or ``model.pca_components`` with PCA input.
    pretrained
        Override ``model.image_encoder.pretrained`` (``False`` when weights come from a checkpoint).
    """
    validate_model_config(config)
    if config.model.name == "ridge":
        from .ridge import RidgeSTModel

        return RidgeSTModel(config, create_image_encoder(config, pretrained))
    return ContrastiveSTModel(config, spot_in_dim, create_image_encoder(config, pretrained))
