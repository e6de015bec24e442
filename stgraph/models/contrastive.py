"""The two-branch contrastive model that BLEEP, HECLIP, mclSTExp and ST-GCHB are configurations of.

::

    image branch:  patch ─ backbone ─▶ f (N, F) ─[DGI over the spot graph]─▶ z_img ─ ProjHead ─▶ I (N, d)
    spot branch:   expr/PCA (N, P) ─ spot encoder ─[DGI over the spot graph]─▶ z_spot ─ ProjHead ─▶ S (N, d)

Batches are dicts of tensors:

- ``spot_input`` (N, P): the spot-branch input (log expression, or its PCA);
- ``patch`` (N, 3, H, W) normalised patches, or ``features`` (N, F) cached backbone features;
- ``coords`` (N, 2) long integer grid coordinates ``[x, y]`` (transformer encoder);
- ``edge_index`` (2, E): the slide's spot graph (DGI, graph spot encoders); N is then all spots of one slide;
- ``loss_index`` (M,) optional: the spots the losses are taken over (default: all N).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from functools import partial

from ..nn import GraphInfomax, ProjHead
from .base import MODELS, ModelSpec, STModel
from .spot_encoders import IdentitySpotEncoder, create_spot_encoder, uses_graph

__all__ = ["BranchOutput", "ContrastiveSTModel"]


@dataclass
class BranchOutput:
    """One branch's intermediate tensors (rows = spots of the batch).

    ``inputs`` (N, P) branch input, ``hidden`` (N, H) representation before the head (the DGI output
    when DGI is on), ``emb`` (N, d) projection, ``dgi`` the (pos_z, neg_z, summary) triple or ``None``,
    ``dgi_loss`` () the branch's DGI loss (its discriminator applied in the forward; training mode only).
    """

    inputs: torch.Tensor
    hidden: torch.Tensor
    emb: torch.Tensor
    dgi: Optional[tuple] = None
    dgi_loss: Optional[torch.Tensor] = None


@MODELS.register("contrastive")
class ContrastiveSTModel(STModel):
    """The two-branch model of BLEEP, HECLIP, mclSTExp and ST-GCHB: image and spot encoders in one joint space.

    The objective lives in :class:`stgraph.losses.Objective`; ``model.kind: contrastive``, trained by the
    :class:`~stgraph.training.Trainer`, predicting by kNN retrieval from the reference.

    Parameters
    ----------
    spot_in_dim
        Width P of the spot-branch input (number of genes, or PCA components).
    image_encoder
        The backbone (e.g. :class:`TimmImageEncoder`; ``num_features`` = F); kept inside the model so a saved
        model predicts from raw patches even when training used cached features.
    spot_encoder
        A module with ``out_dim`` and ``forward(x, coords)``, or a builder ``in_dim -> module`` (called after
        the image branch exists, so parameters are initialised in a fixed order); default identity (BLEEP).
    embed_dim
        Joint-space width d.
    image_dgi_dim, spot_dgi_dim
        Hidden width of a Deep Graph Infomax layer over the spot graph on that branch; ``None``: no DGI.
    image_head_dropout, spot_head_dropout
        Dropout of the projection heads.
    """

    spec = ModelSpec(training="trainer", output="retrieval", min_batch_size=2, reference=("spot", "image"),
                     ignores=("model.ridge", "model.spot_graph"),
                     ignores_why="they configure the ridge and spot_graph kinds, not the contrastive model")

    @classmethod
    def from_config(cls, config, spot_in_dim: int, image_encoder: nn.Module) -> "ContrastiveSTModel":
        """The model ``config.model`` describes (spot encoder, DGI on either branch, heads)."""
        m = config.model
        return cls(spot_in_dim, image_encoder,
                   spot_encoder=partial(create_spot_encoder, name=m.spot_encoder.name, options=m.spot_encoder.options),
                   embed_dim=m.embed_dim,
                   image_dgi_dim=m.image_dgi.hidden_dim if m.image_dgi.enabled else None,
                   spot_dgi_dim=m.spot_dgi.hidden_dim if m.spot_dgi.enabled else None,
                   image_head_dropout=m.image_head_dropout, spot_head_dropout=m.spot_head_dropout)

    @classmethod
    def needs_graph(cls, config, query: bool = False) -> bool:
        """The image branch's DGI reads the graph always; the spot branch's (DGI, a graph spot encoder) only
        on training and reference slides (a query is embedded by its image)."""
        m = config.model
        spot = m.spot_dgi.enabled or uses_graph(m.spot_encoder.name)
        return bool(m.image_dgi.enabled or (spot and not query))

    def __init__(self, spot_in_dim: int, image_encoder: nn.Module, spot_encoder=None, embed_dim: int = 256,
                 image_dgi_dim: Optional[int] = None, spot_dgi_dim: Optional[int] = None,
                 image_head_dropout: float = 0.1, spot_head_dropout: float = 0.1):
        super().__init__()
        self.spot_in_dim = int(spot_in_dim)
        self.embed_dim = int(embed_dim)
        self.image_encoder = image_encoder
        feat_dim = image_encoder.num_features

        self.image_dgi = GraphInfomax(feat_dim, image_dgi_dim) if image_dgi_dim else None
        image_hidden = image_dgi_dim if self.image_dgi is not None else feat_dim
        self.image_head = ProjHead(image_hidden, embed_dim, dropout=image_head_dropout)

        if spot_encoder is None:
            spot_encoder = IdentitySpotEncoder
        self.spot_encoder = spot_encoder if isinstance(spot_encoder, nn.Module) else spot_encoder(self.spot_in_dim)
        spot_hidden = self.spot_encoder.out_dim
        self.spot_dgi = GraphInfomax(spot_hidden, spot_dgi_dim) if spot_dgi_dim else None
        if self.spot_dgi is not None:
            spot_hidden = spot_dgi_dim
        self.spot_head = ProjHead(spot_hidden, embed_dim, dropout=spot_head_dropout)

    @property
    def uses_graph(self) -> bool:
        """Whether a branch reads the spot graph (a DGI layer, or a graph spot encoder)."""
        return self.image_dgi is not None or self.spot_dgi is not None or self.spot_encoder_uses_graph

    @property
    def spot_encoder_uses_graph(self) -> bool:
        return bool(getattr(self.spot_encoder, "uses_graph", False))

    # ----------------------------------------------------------------------------------------- branches
    def image_features(self, batch: dict) -> torch.Tensor:
        """Backbone features (N, F): the cached ``features`` if present, else the backbone on ``patch``."""
        if "features" in batch:
            return batch["features"]
        if "stage_input" in batch:
            return self.image_encoder.forward_tail(batch["stage_input"])
        return self.image_encoder(batch["patch"])

    @staticmethod
    def _graph_step(dgi: GraphInfomax, x: torch.Tensor, batch: dict, train: bool):
        """``(hidden, (pos_z, neg_z, summary) or None, DGI loss or None)``.

        The discriminator is applied here, in the forward, so that every trainable parameter a loss term
        depends on is reached from the model's outputs (what ``DistributedDataParallel`` needs); the loss
        is taken in float32 outside any autocast region.
        """
        if "edge_index" not in batch:
            raise ValueError("a DGI encoder needs the slide's spot graph: batch['edge_index'] is missing")
        if train:
            pos, neg, summary = dgi(x, batch["edge_index"])
            with torch.autocast(pos.device.type, enabled=False):
                loss = dgi.loss(pos.float(), neg.float(), summary.float())
            return pos, (pos, neg, summary), loss
        return dgi.embed(x, batch["edge_index"]), None, None

    def encode_image(self, batch: dict) -> BranchOutput:
        """Image branch: (N, 3, H, W) or (N, F) → :class:`BranchOutput` with ``emb`` (N, d)."""
        feats = self.image_features(batch)
        hidden, dgi, dgi_loss = feats, None, None
        if self.image_dgi is not None:
            hidden, dgi, dgi_loss = self._graph_step(self.image_dgi, feats, batch, self.training)
        return BranchOutput(feats, hidden, self.image_head(hidden), dgi, dgi_loss)

    def encode_spot(self, batch: dict) -> BranchOutput:
        """Spot branch: (N, P) → :class:`BranchOutput` with ``emb`` (N, d)."""
        x = batch["spot_input"]
        if self.spot_encoder_uses_graph:
            if "edge_index" not in batch:
                raise ValueError("a graph spot encoder needs the slide's spot graph: batch['edge_index'] is "
                                 "missing (train.batching=slide)")
            hidden = self.spot_encoder(x, batch.get("coords"), edge_index=batch["edge_index"])
        else:
            hidden = self.spot_encoder(x, batch.get("coords"))
        dgi, dgi_loss = None, None
        if self.spot_dgi is not None:
            hidden, dgi, dgi_loss = self._graph_step(self.spot_dgi, hidden, batch, self.training)
        return BranchOutput(x, hidden, self.spot_head(hidden), dgi, dgi_loss)

    def forward(self, batch: dict) -> tuple[BranchOutput, BranchOutput]:
        """Both branches: ``(image, spot)`` :class:`BranchOutput`."""
        return self.encode_image(batch), self.encode_spot(batch)
