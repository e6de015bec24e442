"""Image encoders: any timm CNN/ViT as a pooled-feature extractor.

``TimmImageEncoder`` maps a patch batch (B, 3, H, W), ImageNet-normalised, to pooled features (B, F)
(``num_classes=0``). Pretrained weights come from a local file found by
:func:`~stgraph.models.weights.resolve_weights` (the config's file, ``$STGRAPH_WEIGHTS``, the hub cache) via
``pretrained_cfg_overlay=dict(file=...)``, or from the hub (timm's normal download).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..errors import StgraphError
from ..registry import Registry
from .weights import PretrainedWeightsError, WeightsSource, resolve_weights

__all__ = ["IMAGE_ENCODERS", "TimmImageEncoder", "FREEZE_POLICIES", "trainable_groups", "PretrainedWeightsError"]

#: ``model.image_encoder.name`` → builder taking the section's shared fields (the registry's ``inputs``)
#: and the entry's own ``options`` as keyword arguments; returns a module with ``num_features`` and
#: ``forward(patches (B, 3, H, W)) -> (B, F)``.
IMAGE_ENCODERS: Registry[nn.Module] = Registry(
    "image encoder", inputs=("backbone", "pretrained", "weights", "freeze", "architecture", "model_kwargs",
                             "input_size"))

FREEZE_POLICIES = ("none", "all", "all_but_last_stage")


HUB_PREFIX = "hf-hub:"


def _create_timm_model(backbone: str, pretrained: bool, weights: Optional[str],
                       architecture: Optional[str] = None, model_kwargs: Optional[dict] = None
                       ) -> tuple[nn.Module, Optional[WeightsSource]]:
    """A timm model with pooled features, and where its pretrained weights came from (``None``: not
    pretrained). ``backbone`` is a timm name or a hub id (``hf-hub:org/name``, e.g. a pathology foundation
    model); with a local weights file a hub id needs the timm ``architecture`` it was built on (e.g.
    ``vit_large_patch16_224`` for UNI), since nothing is downloaded. Weights are found by
    :func:`~stgraph.models.weights.resolve_weights` (config file, ``$STGRAPH_WEIGHTS``, hub cache, hub)."""
    import timm

    source = resolve_weights(backbone, weights, architecture) if pretrained else None
    file = source.file if source is not None else None
    name = backbone
    if backbone.startswith(HUB_PREFIX) and (file is not None or not pretrained):
        if architecture is None:
            raise ValueError(f"{backbone!r} is a hub id: offline (a local weights file, or pretrained=false) set "
                             "model.image_encoder.architecture to its timm architecture, e.g. vit_large_patch16_224")
        name = architecture
    if not name.startswith(HUB_PREFIX) and not timm.is_model(name):
        raise ValueError(f"unknown timm backbone {name!r}; see timm.list_models()")
    kwargs: dict = dict(model_kwargs or {}, num_classes=0)
    if file is not None:
        kwargs["pretrained_cfg_overlay"] = dict(file=str(file))
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs), source
    except Exception as err:  # hub unreachable, corrupt checkpoint, key mismatch
        where = f"file {file} ({source.origin})" if file is not None else "the model hub"
        raise PretrainedWeightsError(
            f"could not load pretrained weights for {backbone!r} from {where}: {err}. "
            "Offline, point model.image_encoder.weights at a local checkpoint, or set "
            "model.image_encoder.pretrained=false."
        ) from err


def trainable_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names grouped by stage, stem first (timm's coarse ``group_matcher``)."""
    from timm.models import group_parameters

    groups = group_parameters(model, model.group_matcher(coarse=True))
    return [list(names) for _, names in sorted(groups.items())]


def _last_stage_names(model: nn.Module) -> list[str]:
    """Names of the parameters of the last stage (plus the final norm that some models keep apart)."""
    groups = trainable_groups(model)
    names: list[str] = []
    # DenseNet keeps its final BatchNorm (2 tensors) as its own group: take groups until one is a stage.
    for group in reversed(groups):
        names.extend(group)
        if len(group) > 4:
            break
    return names


class TimmImageEncoder(nn.Module):
    """Pooled-feature image encoder over a timm backbone.

    ``features = GlobalPool(backbone(x))``; input (B, 3, H, W) float ImageNet-normalised,
    output (B, F) with ``F = backbone.num_features`` (2048 for resnet50, 1024 for densenet121,
    1280 for mobilenetv2_100).

    Parameters
    ----------
    backbone
        timm model name.
    pretrained
        Load pretrained weights (``weights`` when given, else ``$STGRAPH_WEIGHTS``, the hub cache, the hub).
    weights
        Local checkpoint file (state dict); ``None`` looks it up (:mod:`stgraph.models.weights`).
    freeze
        ``none`` (train all), ``all`` (no gradient; eval-mode BatchNorm), ``all_but_last_stage``
        (for a ViT: the last transformer block and the final norm).
    input_size
        Side patches are resized to before the backbone (``None``: as extracted).
    architecture
        timm architecture of a hub-id ``backbone``, used when loading ``weights`` from a local file.
    model_kwargs
        Extra ``timm.create_model`` arguments (e.g. ``init_values=1e-5, dynamic_img_size=True`` for UNI).
    """

    def __init__(self, backbone: str = "resnet50", pretrained: bool = True, weights: Optional[str] = None,
                 freeze: str = "none", input_size: Optional[int] = None, architecture: Optional[str] = None,
                 model_kwargs: Optional[dict] = None):
        super().__init__()
        if freeze not in FREEZE_POLICIES:
            raise ValueError(f"freeze={freeze!r} is not one of {list(FREEZE_POLICIES)}")
        self.backbone_name = backbone
        self.freeze = freeze
        self.input_size = input_size
        self.model, self.weights_source = _create_timm_model(backbone, pretrained, weights, architecture,
                                                             model_kwargs)
        self.num_features = int(self.model.num_features)
        self._apply_freeze()
        self._split = None

    def _parts(self) -> tuple[nn.Module, nn.Module]:
        # Held outside the module tree so the state dict keeps timm's parameter names.
        if self._split is None:
            object.__setattr__(self, "_split", split_last_stage(self.model))
        return self._split

    @torch.no_grad()
    def forward_trunk(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen stages: (B, 3, H, W) → the last stage's input, (B, C, h, w) or (B, T, D) tokens."""
        trunk = self._parts()[0]
        was = trunk.training
        trunk.eval()  # frozen stages keep their BatchNorm statistics
        out = trunk(images)
        trunk.train(was)
        return out

    def forward_tail(self, stage_input: torch.Tensor) -> torch.Tensor:
        """The trainable last stage, final norm and pooling: stage input → (B, F)."""
        return self._parts()[1](stage_input)

    def _apply_freeze(self) -> None:
        if self.freeze == "none":
            return
        trainable = set(_last_stage_names(self.model)) if self.freeze == "all_but_last_stage" else set()
        for name, param in self.model.named_parameters():
            param.requires_grad_(name in trainable)

    def train(self, mode: bool = True) -> "TimmImageEncoder":
        # A fully frozen backbone keeps its BatchNorm statistics fixed.
        super().train(mode and self.freeze != "all")
        return self

    @property
    def pretrained_cfg(self) -> dict:
        return dict(getattr(self.model, "pretrained_cfg", {}) or {})

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, F)."""
        return self.model(images)


class _ViTTrunk(nn.Module):
    """Patch embedding, position embedding and all transformer blocks but the last (timm ViT)."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        object.__setattr__(self, "_vit", vit)  # not a submodule: the trunk owns only its own parts
        self.patch_embed, self.norm_pre = vit.patch_embed, vit.norm_pre
        self.blocks = nn.ModuleList(vit.blocks[:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self._vit
        x = self.norm_pre(v.patch_drop(v._pos_embed(self.patch_embed(x))))
        for block in self.blocks:
            x = block(x)
        return x


class _ViTTail(nn.Module):
    """The last block, the final norm and timm's pooling head ((N, T, D) tokens → (N, D))."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        object.__setattr__(self, "_vit", vit)
        self.block, self.norm, self.fc_norm = vit.blocks[-1], vit.norm, vit.fc_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._vit.forward_head(self.norm(self.block(x)))


def split_last_stage(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    r"""Split a timm backbone into ``(trunk, tail)`` with ``tail(trunk(x)) == model(x)``.

    The tail is the last stage plus the final norm and pooling: exactly the parameters that
    ``freeze="all_but_last_stage"`` trains. Running the frozen trunk once per slide and caching its output
    (the "stage input", (N, C, h, w) for CNNs, (N, T, D) tokens for ViTs) lets fine-tuning pay only for the
    last stage. Supported: ResNet, EfficientNet/MobileNet, VisionTransformer; others raise ``ValueError``.
    The modules are shared with ``model`` (no copy).
    """
    kind = type(model).__name__
    if kind == "ResNet":
        trunk = nn.Sequential(model.conv1, model.bn1, model.act1, model.maxpool, model.layer1, model.layer2,
                              model.layer3)
        return trunk, nn.Sequential(model.layer4, model.global_pool)
    if kind in ("EfficientNet", "MobileNetV3"):
        trunk = nn.Sequential(model.conv_stem, model.bn1, *model.blocks[:-1])
        tail = [model.blocks[-1]] + ([model.conv_head, model.bn2] if hasattr(model, "bn2") else [])
        if kind == "MobileNetV3":
            raise ValueError("MobileNetV3 keeps its head after pooling; last-stage caching is not supported")
        return trunk, nn.Sequential(*tail, model.global_pool)
    if kind == "VisionTransformer":
        return _ViTTrunk(model), _ViTTail(model)
    raise ValueError(f"last-stage caching is not supported for {kind} backbones (ResNet, EfficientNet/MobileNet "
                     "and ViT are); set model.image_encoder.cache_stage_input=false")


@IMAGE_ENCODERS.register("timm")
def timm_encoder(backbone: str = "resnet50", pretrained: bool = True, weights: Optional[str] = None,
                 freeze: str = "none", architecture: Optional[str] = None, model_kwargs: Optional[dict] = None,
                 input_size: Optional[int] = None, **timm_kwargs) -> TimmImageEncoder:
    """Any timm backbone as a pooled-feature extractor; options go to ``timm.create_model`` (as ``model_kwargs``)."""
    return TimmImageEncoder(backbone=backbone, pretrained=pretrained, weights=weights, freeze=freeze,
                            input_size=input_size, architecture=architecture,
                            model_kwargs={**(model_kwargs or {}), **timm_kwargs})
