"""Deep Graph Infomax over the spot graph (ST-GCHB's gene and image branches)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import DeepGraphInfomax, GCNConv

__all__ = ["GraphInfomax", "GCNEncoder", "mean_sigmoid_summary", "shuffle_node_features"]


class GCNEncoder(nn.Module):
    r"""Input LayerNorm, one graph convolution, PReLU (the DGI encoder of ST-GCHB).

    .. math::
        \mathbf{Z} = \mathrm{PReLU}\big(\hat{\mathbf{D}}^{-1/2}\hat{\mathbf{A}}\hat{\mathbf{D}}^{-1/2}
        \,\mathrm{LN}(\mathbf{X})\,\mathbf{W}\big), \qquad \hat{\mathbf{A}} = \mathbf{A} + \mathbf{I},
        \qquad \mathrm{LN}(\mathbf{x}) = \boldsymbol{\gamma}\odot\frac{\mathbf{x}-\mu(\mathbf{x})}
        {\sqrt{\sigma^2(\mathbf{x})+\epsilon}} + \boldsymbol{\beta}

    The LayerNorm standardises each spot's feature vector before the convolution. Backbone features
    (pooled CNN activations up to tens) and PCA scores (first components in the tens) otherwise give
    embeddings whose discriminator logits are in the hundreds, where the DGI loss is flat.
    ``normalize=False`` gives the plain encoder of the paper.

    Shapes
    ------
    ``x`` (N, in_dim), ``edge_index`` (2, E) → (N, hidden_dim).
    """

    def __init__(self, in_dim: int, hidden_dim: int, normalize: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim) if normalize else nn.Identity()
        self.conv = GCNConv(in_dim, hidden_dim)
        self.act = nn.PReLU(hidden_dim)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(self.norm(x), edge_index))


def mean_sigmoid_summary(z: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    r"""Graph summary :math:`\mathbf{s} = \sigma\big(\tfrac{1}{N}\sum_i \mathbf{z}_i\big)`; (N, H) → (H,)."""
    return torch.sigmoid(z.mean(dim=0))


def shuffle_node_features(x: torch.Tensor, edge_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DGI corruption: the rows of ``x`` permuted, on the same graph.

    Uses the global torch RNG (``torch.randperm`` without a generator), so ``torch.manual_seed`` makes the
    negatives reproducible.
    """
    perm = torch.randperm(x.size(0), device=x.device)
    return x[perm], edge_index


class GraphInfomax(DeepGraphInfomax):
    r"""Deep Graph Infomax (Veličković et al., 2019) with a one-layer GCN encoder.

    Encoder :math:`\mathbf{Z} = \mathrm{PReLU}(\mathrm{GCN}(\mathrm{LN}(\mathbf{X}), \mathbf{A}))` (see
    :class:`GCNEncoder`; the input LayerNorm is on unless ``normalize=False``); corruption
    :math:`\tilde{\mathbf{X}} = \mathbf{P}\mathbf{X}` (random row permutation, same graph) giving
    :math:`\mathbf{Z}'`; summary :math:`\mathbf{s} = \sigma(\frac{1}{N}\sum_i \mathbf{z}_i)`; bilinear
    discriminator :math:`D(\mathbf{z}, \mathbf{s}) = \sigma(\ell)` with the width-scaled logit
    :math:`\ell = \frac{1}{H}\,\mathbf{z}^\top \mathbf{W}\mathbf{s}`; loss

    .. math::
        \mathcal{L}_{DGI} = -\frac{1}{N}\sum_i \log D(\mathbf{z}_i, \mathbf{s})
                            -\frac{1}{N}\sum_i \log\big(1 - D(\mathbf{z}'_i, \mathbf{s})\big)
                          = -\frac{1}{N}\sum_i \log\sigma(\ell_i) - \frac{1}{N}\sum_i \log\sigma(-\ell'_i)

    computed from the logits with ``logsigmoid``. ``torch_geometric.nn.DeepGraphInfomax.loss`` takes
    :math:`\log(\sigma(\ell) + 10^{-15})` instead: once :math:`|\ell|` passes ~37 float32 rounds
    :math:`\sigma` to exactly 0 or 1, the term sticks at :math:`-\ln 10^{-15} = 34.54` and its gradient is
    zero. Chance level (a discriminator that cannot tell the graphs apart) is :math:`2\ln 2 \approx 1.386`.

    Why :math:`1/H`: the logit sums :math:`H^2` products :math:`z_j W_{jk} s_k`, with :math:`z_j = O(1)` after
    the LayerNorm and :math:`s_k \in (0, 1)`. Adam moves every weight by about the learning rate per step,
    so one step moves the unscaled logit by up to :math:`\eta \sum_j |z_j| \sum_k s_k`, which is
    :math:`O(\eta H^2)`: about 55 on average at the first step for H = 256, lr 1e-3 on real HER2+
    mobilenetv2 features, after which the loss jumps between chance and 50 (the discriminator overshoots
    from one confident wrong answer to the next). With :math:`1/H` (a mean-field readout) the logit starts
    at ~0 (loss at chance) and moves by ~0.1 per step, whatever the width. ``torch_geometric``'s module
    has no such factor (its uniform initialisation only bounds the *initial* logit).

    Parameters
    ----------
    in_dim
        Node feature width.
    hidden_dim
        Embedding width H (256 in ST-GCHB).
    normalize
        Standardise node features with a LayerNorm before the GCN (default on).

    Shapes
    ------
    ``forward(x (N, in_dim), edge_index (2, E)) -> (pos_z (N, H), neg_z (N, H), summary (H,))``;
    ``embed(x, edge_index) -> (N, H)``; ``loss(pos_z, neg_z, summary) -> ()``.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 256, normalize: bool = True):
        if in_dim <= 0 or hidden_dim <= 0:
            raise ValueError(f"GraphInfomax needs positive widths, got in_dim={in_dim}, hidden_dim={hidden_dim}")
        super().__init__(hidden_channels=hidden_dim, encoder=GCNEncoder(in_dim, hidden_dim, normalize),
                         summary=mean_sigmoid_summary, corruption=shuffle_node_features)
        self.in_dim, self.hidden_dim = int(in_dim), int(hidden_dim)

    @staticmethod
    def _check_inputs(x: torch.Tensor, edge_index: torch.Tensor) -> None:
        if x.dim() != 2:
            raise ValueError(f"GraphInfomax expects node features of shape (N, F), got {tuple(x.shape)}")
        if edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ValueError(f"edge_index must have shape (2, E), got {tuple(edge_index.shape)}")
        if edge_index.numel() and int(edge_index.max()) >= x.size(0):
            raise ValueError(f"edge_index refers to node {int(edge_index.max())} but there are only "
                             f"{x.size(0)} nodes")

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor):
        """Positive embeddings, corrupted (row-shuffled) embeddings and the summary vector."""
        self._check_inputs(x, edge_index)
        return super().forward(x, edge_index)

    def logits(self, z: torch.Tensor, summary: torch.Tensor) -> torch.Tensor:
        r"""Discriminator logits :math:`\ell_i = \frac{1}{H}\mathbf{z}_i^\top \mathbf{W}\mathbf{s}`:
        (N, H), (H,) → (N,). The :math:`1/H` keeps one optimiser step from moving the logits by
        :math:`O(\eta H^2)` (see the class docstring)."""
        return z @ (self.weight @ summary) / self.hidden_dim

    def discriminate(self, z: torch.Tensor, summary: torch.Tensor, sigmoid: bool = True) -> torch.Tensor:
        """``torch_geometric``'s name for the discriminator, with the same width-scaled logits as :meth:`loss`."""
        value = self.logits(z, summary.t() if summary.dim() > 1 else summary)
        return torch.sigmoid(value) if sigmoid else value

    def loss(self, pos_z: torch.Tensor, neg_z: torch.Tensor, summary: torch.Tensor) -> torch.Tensor:
        r"""DGI binary cross-entropy from the logits (finite, never saturates): (N, H), (N, H), (H,) → ()."""
        pos = F.logsigmoid(self.logits(pos_z, summary)).mean()
        neg = F.logsigmoid(-self.logits(neg_z, summary)).mean()
        return -(pos + neg)

    def embed(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """Node embeddings without corruption (inference): (N, in_dim) → (N, H)."""
        self._check_inputs(x, edge_index)
        return self.encoder(x, edge_index)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.in_dim} -> {self.hidden_dim})"

