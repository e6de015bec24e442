"""The two-branch contrastive model that BLEEP, HECLIP, mclSTExp and ST-GCHB are configurations of.

::

    image branch:  patch ─ backbone ─▶ f (N, F) ─[DGI over the spot graph]─▶ z_img ─ ProjHead ─▶ I (N, d)
    spot branch:   expr/PCA (N, P) ─ spot encoder ─[DGI over the spot graph]─▶ z_spot ─ ProjHead ─▶ S (N, d)

Batches are dicts of tensors:

- ``spot_input`` (N, P): the spot-branch input (log expression, or its PCA);
- ``patch`` (N, 3, H, W) normalised patches, or ``features`` (N, F) cached backbone features;
- ``coords`` (N, 2) long integer grid coordinates ``[x, y]`` (transformer encoder);
- ``edge_index`` (2, E): the slide's spot graph (DGI); N is then all spots of one slide;
- ``loss_index`` (M,) optional: the spots the losses are taken over (default: all N).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..losses import HSICBottleneck, create_loss
from ..nn import GraphInfomax, ProjHead
from .image_encoders import TimmImageEncoder
from .spot_encoders import create_spot_encoder

__all__ = ["BranchOutput", "ContrastiveSTModel"]


@dataclass
class BranchOutput:
    """One branch's intermediate tensors (rows = spots of the batch).

    ``inputs`` (N, P) branch input, ``hidden`` (N, H) representation before the head (the DGI output
    when DGI is on), ``emb`` (N, d) projection, ``dgi`` the (pos_z, neg_z, summary) triple or ``None``.
    """

    inputs: torch.Tensor
    hidden: torch.Tensor
    emb: torch.Tensor
    dgi: Optional[tuple] = None


class ContrastiveSTModel(nn.Module):
    """Image and spot encoders projected into one joint space, plus their training objective.

    Parameters
    ----------
    config
        :class:`stgraph.config.Config` (uses ``model`` and ``loss``).
    spot_in_dim
        Width P of the spot-branch input (number of genes, or PCA components).
    image_encoder
        The backbone (:class:`TimmImageEncoder`); kept inside the model so a saved model predicts from
        raw patches even when training used cached features.
    """

    def __init__(self, config, spot_in_dim: int, image_encoder: TimmImageEncoder):
        super().__init__()
        mcfg, lcfg = config.model, config.loss
        self.config = config
        self.spot_in_dim = int(spot_in_dim)
        self.image_encoder = image_encoder
        feat_dim = image_encoder.num_features

        self.image_dgi = GraphInfomax(feat_dim, mcfg.image_dgi.hidden_dim) if mcfg.image_dgi.enabled else None
        image_hidden = mcfg.image_dgi.hidden_dim if self.image_dgi is not None else feat_dim
        self.image_head = ProjHead(image_hidden, mcfg.embed_dim, dropout=mcfg.image_head_dropout)

        self.spot_encoder = create_spot_encoder(self.spot_in_dim, mcfg.spot_encoder)
        spot_hidden = self.spot_encoder.out_dim
        self.spot_dgi = GraphInfomax(spot_hidden, mcfg.spot_dgi.hidden_dim) if mcfg.spot_dgi.enabled else None
        if self.spot_dgi is not None:
            spot_hidden = mcfg.spot_dgi.hidden_dim
        self.spot_head = ProjHead(spot_hidden, mcfg.embed_dim, dropout=mcfg.spot_head_dropout)

        self.alignment = create_loss(lcfg.alignment, temperature=lcfg.temperature)
        self.hsic = HSICBottleneck(beta=mcfg.hsic.beta, sigma=mcfg.hsic.sigma) if mcfg.hsic.enabled else None

    @property
    def uses_graph(self) -> bool:
        return self.image_dgi is not None or self.spot_dgi is not None

    # ----------------------------------------------------------------------------------------- branches
    def image_features(self, batch: dict) -> torch.Tensor:
        """Backbone features (N, F): the cached ``features`` if present, else the backbone on ``patch``."""
        if "features" in batch:
            return batch["features"]
        return self.image_encoder(batch["patch"])

    @staticmethod
    def _graph_step(dgi: GraphInfomax, x: torch.Tensor, batch: dict, train: bool):
        if "edge_index" not in batch:
            raise ValueError("a DGI encoder needs the slide's spot graph: batch['edge_index'] is missing")
        if train:
            pos, neg, summary = dgi(x, batch["edge_index"])
            return pos, (pos, neg, summary)
        return dgi.embed(x, batch["edge_index"]), None

    def encode_image(self, batch: dict) -> BranchOutput:
        """Image branch: (N, 3, H, W) or (N, F) → :class:`BranchOutput` with ``emb`` (N, d)."""
        feats = self.image_features(batch)
        hidden, dgi = feats, None
        if self.image_dgi is not None:
            hidden, dgi = self._graph_step(self.image_dgi, feats, batch, self.training)
        return BranchOutput(feats, hidden, self.image_head(hidden), dgi)

    def encode_spot(self, batch: dict) -> BranchOutput:
        """Spot branch: (N, P) → :class:`BranchOutput` with ``emb`` (N, d)."""
        x = batch["spot_input"]
        hidden = self.spot_encoder(x, batch.get("coords"))
        dgi = None
        if self.spot_dgi is not None:
            hidden, dgi = self._graph_step(self.spot_dgi, hidden, batch, self.training)
        return BranchOutput(x, hidden, self.spot_head(hidden), dgi)

    # ---------------------------------------------------------------------------------------- objective
    def loss_terms(self, batch: dict) -> dict[str, torch.Tensor]:
        """Unweighted loss terms for one batch.

        ``align``: the configured alignment loss (clip / bleep / heclip) between I and S on the loss spots;
        ``dgi_image`` / ``dgi_spot``: DGI BCE of each graph branch (over all nodes);
        ``hsic_image`` / ``hsic_spot``: ``nHSIC(X_in, Z) − β·nHSIC(Z, P)`` on the loss spots.
        """
        image, spot = self.encode_image(batch), self.encode_spot(batch)
        idx = batch.get("loss_index")

        def rows(t: torch.Tensor) -> torch.Tensor:
            return t if idx is None else t[idx]

        terms = {"align": self.alignment(rows(image.emb), rows(spot.emb))}
        if image.dgi is not None:
            terms["dgi_image"] = self.image_dgi.loss(*image.dgi)
        if spot.dgi is not None:
            terms["dgi_spot"] = self.spot_dgi.loss(*spot.dgi)
        if self.hsic is not None:
            for name, out in (("image", image), ("spot", spot)):
                if name in self.config.model.hsic.branches:
                    terms[f"hsic_{name}"] = self.hsic(rows(out.inputs), rows(out.hidden), rows(out.emb))
        return terms

    def loss_weights(self) -> dict[str, float]:
        """Weight of each named term in the total loss, from the config."""
        m = self.config.model
        weights = {"align": self.config.loss.weight}
        if m.image_dgi.enabled:
            weights["dgi_image"] = m.image_dgi.weight
        if m.spot_dgi.enabled:
            weights["dgi_spot"] = m.spot_dgi.weight
        if m.hsic.enabled:
            for name in m.hsic.branches:
                weights[f"hsic_{name}"] = m.hsic.weight
        return weights
