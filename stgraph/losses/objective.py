r"""The training objective: which loss terms a config asks for, their weights, and the DGI pre-training
schedule. The model only produces branch outputs; this module turns them into

.. math::
    \mathcal{L} = w_{align}\,\mathcal{L}_{align}(I, S)
                + \sum_{b \in \{image, spot\}} w^{dgi}_b\,\mathcal{L}^{dgi}_b
                + \sum_{b} w^{hsic}\,[\mathrm{nHSIC}(X_b, Z_b) - \beta\,\mathrm{nHSIC}(Z_b, P_b)]

Named terms (one column each in the training log):

- ``align``: the registered alignment loss (``loss.alignment``: clip / bleep / heclip / ...) between the
  projected image and spot embeddings I, S on the loss spots (``batch['loss_index']``, default all);
- ``dgi_image`` / ``dgi_spot``: each graph branch's DGI loss over all nodes (training mode only: it needs
  the corrupted graph). The model computes it in its forward (``BranchOutput.dgi_loss``: the
  discriminator is a model parameter), so the objective itself holds no parameters and touches no model
  part: everything trainable is reached from the forward, as ``DistributedDataParallel`` requires;
- ``hsic_image`` / ``hsic_spot``: the nHSIC bottleneck of each branch listed in ``model.hsic.branches``.

Schedule: while ``epoch < pretrain_epochs`` of a DGI branch, training uses only the DGI terms still in their
pre-training window; afterwards all terms. Validation always uses every weight.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch
from torch import nn

from .composite import CompositeLoss
from .hsic import HSICBottleneck
from .registry import create_loss

__all__ = ["Objective"]


class Objective:
    """Named loss terms from a two-branch model's outputs, their weights and the DGI pre-training schedule.

    Parameters
    ----------
    alignment
        Loss module ``(image_emb (N, d), spot_emb (N, d)) -> scalar``.
    align_weight
        Weight of ``align``.
    dgi_weights
        ``{"image": w, "spot": w}`` for the DGI branches that are enabled.
    dgi_pretrain_epochs
        ``{"image": n, "spot": n}``: epochs each DGI term is trained alone first.
    hsic
        :class:`~stgraph.losses.HSICBottleneck`, or ``None``.
    hsic_weight, hsic_branches
        Weight of each ``hsic_<branch>`` term and the branches that get one.
    """

    def __init__(self, alignment: nn.Module, align_weight: float = 1.0,
                 dgi_weights: Optional[Mapping[str, float]] = None,
                 dgi_pretrain_epochs: Optional[Mapping[str, int]] = None,
                 hsic: Optional[HSICBottleneck] = None, hsic_weight: float = 1.0,
                 hsic_branches: Sequence[str] = ("spot", "image")):
        self.alignment = alignment
        self.align_weight = align_weight
        self.dgi_weights = dict(dgi_weights or {})
        self.dgi_pretrain_epochs = dict(dgi_pretrain_epochs or {})
        self.hsic = hsic
        self.hsic_weight = hsic_weight
        self.hsic_branches = list(hsic_branches)

    @classmethod
    def from_config(cls, config) -> "Objective":
        """The objective a :class:`~stgraph.config.Config` describes (``loss`` and the model's switches)."""
        m, lcfg = config.model, config.loss
        dgi = {name: c for name, c in (("image", m.image_dgi), ("spot", m.spot_dgi)) if c.enabled}
        return cls(
            alignment=create_loss(lcfg.alignment, temperature=lcfg.temperature, **dict(lcfg.options or {})),
            align_weight=lcfg.weight,
            dgi_weights={name: c.weight for name, c in dgi.items()},
            dgi_pretrain_epochs={name: c.pretrain_epochs for name, c in dgi.items()},
            hsic=HSICBottleneck(beta=m.hsic.beta, sigma=m.hsic.sigma) if m.hsic.enabled else None,
            hsic_weight=m.hsic.weight,
            hsic_branches=m.hsic.branches,
        )

    # --------------------------------------------------------------------------------------- weights
    def all_weights(self) -> dict[str, float]:
        """Weight of every named term."""
        weights = {"align": self.align_weight}
        for name in ("image", "spot"):
            if name in self.dgi_weights:
                weights[f"dgi_{name}"] = self.dgi_weights[name]
        if self.hsic is not None:
            for name in self.hsic_branches:
                weights[f"hsic_{name}"] = self.hsic_weight
        return weights

    def weights(self, epoch: Optional[int] = None) -> dict[str, float]:
        """Weights in force at training ``epoch`` (pre-training schedule applied); ``None``: all of them."""
        weights = self.all_weights()
        if epoch is None:
            return weights
        pretrain = {f"dgi_{name}": n for name, n in self.dgi_pretrain_epochs.items()}
        if epoch < max(pretrain.values(), default=0):
            # DGI pre-training phase: only the DGI terms still in their pre-training window.
            return {k: w for k, w in weights.items() if pretrain.get(k, 0) > epoch}
        return weights

    # ----------------------------------------------------------------------------------------- terms
    def terms_from(self, image, spot, idx: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """Unweighted loss terms from the two branches' :class:`~stgraph.models.contrastive.BranchOutput`
        (the rows may be a whole global batch gathered from several processes); ``idx``: the loss rows.
        Parameter-free: the DGI terms are the losses the model's forward computed."""

        def rows(t: torch.Tensor) -> torch.Tensor:
            return t if idx is None else t[idx]

        terms = {"align": self.alignment(rows(image.emb), rows(spot.emb))}
        if image.dgi_loss is not None:
            terms["dgi_image"] = image.dgi_loss
        if spot.dgi_loss is not None:
            terms["dgi_spot"] = spot.dgi_loss
        if self.hsic is not None:
            for name, out in (("image", image), ("spot", spot)):
                if name in self.hsic_branches:
                    terms[f"hsic_{name}"] = self.hsic(rows(out.inputs), rows(out.hidden), rows(out.emb))
        return terms

    def __repr__(self) -> str:
        return f"Objective({self.alignment.__class__.__name__}, weights={self.all_weights()})"
