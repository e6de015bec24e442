"""mclSTExp's spot encoder: coordinate embeddings plus self-attention across the spots of a slide."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SpotTransformer", "SpotAttention", "FeedForward", "TransformerBlock"]


class SpotAttention(nn.Module):
    r"""Multi-head self-attention over a sequence of spots.

    .. math::
        [\mathbf{Q}, \mathbf{K}, \mathbf{V}] = \mathbf{X}\mathbf{W}_{qkv}, \qquad
        \mathrm{head}_h = \mathrm{Dropout}\big(\mathrm{softmax}(\mathbf{Q}_h\mathbf{K}_h^\top / \sqrt{d_h})\big)
        \mathbf{V}_h,
        \qquad \mathbf{Y} = \mathrm{Dropout}\big([\mathrm{head}_1 \| \dots \| \mathrm{head}_H]\mathbf{W}_o
        + \mathbf{b}_o\big)

    ``W_qkv`` has no bias; the output projection is the identity when ``heads == 1`` and
    ``dim_head == dim`` (as in the ViT-style blocks of mclSTExp).

    Shapes
    ------
    ``x`` (B, N, dim), optional ``key_padding_mask`` (B, N) bool (True = padding) → (B, N, dim).
    """

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.attn_dropout = float(dropout)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        if heads == 1 and dim_head == dim:
            self.to_out: nn.Module = nn.Identity()
        else:
            self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (t.view(b, n, self.heads, self.dim_head).transpose(1, 2) for t in self.to_qkv(x).chunk(3, -1))
        attn_mask = None
        if key_padding_mask is not None:
            # SDPA's boolean mask marks the keys that *take part*; broadcast over heads and queries.
            attn_mask = (~key_padding_mask)[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                             dropout_p=self.attn_dropout if self.training else 0.0)
        return self.to_out(out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))


class FeedForward(nn.Module):
    r"""Position-wise MLP: :math:`\mathbf{y} = \mathrm{Dropout}(\mathbf{W}_2\,\mathrm{Dropout}(
    \mathrm{GELU}(\mathbf{W}_1\mathbf{x} + \mathbf{b}_1)) + \mathbf{b}_2)`; (*, dim) → (*, dim)."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden_dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    r"""Pre-norm transformer block:
    :math:`\mathbf{X} \leftarrow \mathbf{X} + \mathrm{Attn}(\mathrm{LN}(\mathbf{X}))`, then
    :math:`\mathbf{X} \leftarrow \mathbf{X} + \mathrm{FF}(\mathrm{LN}(\mathbf{X}))`; (B, N, dim) → (B, N, dim)."""

    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = SpotAttention(dim, heads=heads, dim_head=dim_head, dropout=dropout)
        self.ff_norm = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, mlp_dim, dropout=dropout)

    def forward(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), key_padding_mask)
        return x + self.ff(self.ff_norm(x))


class SpotTransformer(nn.Module):
    r"""mclSTExp spot encoder: expression plus learned coordinate embeddings, then self-attention in which
    the spots of one batch (one slide) are the tokens of one sequence.

    .. math::
        \mathbf{z}_i^{(0)} = \mathbf{x}_i + \mathbf{E}_x[c_{x,i}] + \mathbf{E}_y[c_{y,i}], \qquad
        \mathbf{Z}^{(l)} = \mathrm{Block}_l(\mathbf{Z}^{(l-1)}),\ l = 1..\text{depth}

    with :math:`\mathbf{E}_x \in \mathbb{R}^{n_x \times G}`, :math:`\mathbf{E}_y \in \mathbb{R}^{n_y \times G}`
    and pre-norm :class:`TransformerBlock` s (``heads × dim_head`` attention, GELU MLP of width ``mlp_dim``).
    There is no positional encoding over token order, so the encoder is permutation-equivariant over spots;
    spatial position enters only through the coordinate embeddings.

    Coordinates outside the tables (``c < 0`` or ``c_x ≥ n_x``, ``c_y ≥ n_y``) are **clamped** into range by
    default (``out_of_range="clamp"``), so a held-out slide with a larger grid still encodes; pass
    ``out_of_range="raise"`` to get a :class:`ValueError` instead.

    Parameters
    ----------
    n_genes
        Token width G (number of genes, or input features).
    n_x, n_y
        Sizes of the x and y coordinate embedding tables.
    depth, heads, dim_head
        Number of blocks, attention heads and width per head.
    mlp_dim
        Hidden width of the block MLPs (default ``n_genes``, as in mclSTExp).
    dropout
        Dropout in attention output and MLPs.
    out_of_range
        ``"clamp"`` or ``"raise"``: what to do with coordinates outside the tables.

    Shapes
    ------
    ``forward(expr (N, G), coords (N, 2) long [x, y]) -> (N, G)``, or ``expr (B, N, G)``, ``coords (B, N, 2)``,
    optional ``key_padding_mask`` (B, N) bool (True = padding spot) ``-> (B, N, G)``.
    """

    def __init__(self, n_genes: int, n_x: int, n_y: int, depth: int = 2, heads: int = 8, dim_head: int = 64,
                 mlp_dim: Optional[int] = None, dropout: float = 0.0, out_of_range: str = "clamp"):
        super().__init__()
        if min(n_genes, n_x, n_y, heads, dim_head) <= 0 or depth < 0:
            raise ValueError(f"SpotTransformer needs positive sizes, got n_genes={n_genes}, n_x={n_x}, n_y={n_y}, "
                             f"depth={depth}, heads={heads}, dim_head={dim_head}")
        if out_of_range not in ("clamp", "raise"):
            raise ValueError(f"out_of_range must be 'clamp' or 'raise', got {out_of_range!r}")
        self.n_genes, self.n_x, self.n_y = int(n_genes), int(n_x), int(n_y)
        self.out_of_range = out_of_range
        self.x_embed = nn.Embedding(n_x, n_genes)
        self.y_embed = nn.Embedding(n_y, n_genes)
        mlp_dim = n_genes if mlp_dim is None else int(mlp_dim)
        self.blocks = nn.ModuleList(TransformerBlock(n_genes, heads, dim_head, mlp_dim, dropout)
                                    for _ in range(depth))

    def _coordinate_index(self, coords: torch.Tensor, size: int, axis: str) -> torch.Tensor:
        if self.out_of_range == "raise":
            lo, hi = int(coords.min()), int(coords.max())
            if lo < 0 or hi >= size:
                raise ValueError(f"spot {axis} coordinates span [{lo}, {hi}] but the {axis} embedding table has "
                                 f"{size} rows (valid 0..{size - 1})")
        return coords.clamp(0, size - 1)

    def embed_coordinates(self, coords: torch.Tensor) -> torch.Tensor:
        """``E_x[c_x] + E_y[c_y]``: (..., 2) integer coordinates → (..., G)."""
        cx = self._coordinate_index(coords[..., 0], self.n_x, "x")
        cy = self._coordinate_index(coords[..., 1], self.n_y, "y")
        return self.x_embed(cx) + self.y_embed(cy)

    def _check_inputs(self, expr: torch.Tensor, coords: torch.Tensor,
                      key_padding_mask: Optional[torch.Tensor]) -> None:
        if expr.dim() not in (2, 3) or expr.size(-1) != self.n_genes:
            raise ValueError(f"SpotTransformer expects expression of shape (N, {self.n_genes}) or "
                             f"(B, N, {self.n_genes}), got {tuple(expr.shape)}")
        if coords.shape != (*expr.shape[:-1], 2):
            raise ValueError(f"coords must have shape {(*expr.shape[:-1], 2)} (integer [x, y] per spot), "
                             f"got {tuple(coords.shape)}")
        if coords.is_floating_point() or coords.is_complex() or coords.dtype == torch.bool:
            raise ValueError(f"coords must be integer grid coordinates (torch.long), got dtype {coords.dtype}")
        if key_padding_mask is not None:
            if expr.dim() != 3 or key_padding_mask.shape != expr.shape[:2]:
                raise ValueError(f"key_padding_mask must have shape (B, N) = {tuple(expr.shape[:2])} for a "
                                 f"(B, N, G) input, got {tuple(key_padding_mask.shape)}")
            if key_padding_mask.dtype != torch.bool:
                raise ValueError(f"key_padding_mask must be bool (True = padding), got {key_padding_mask.dtype}")
            if bool(key_padding_mask.all(dim=1).any()):
                raise ValueError("key_padding_mask masks every spot of at least one sequence")

    def forward(self, expr: torch.Tensor, coords: torch.Tensor,
                key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        self._check_inputs(expr, coords, key_padding_mask)
        single = expr.dim() == 2
        z = expr + self.embed_coordinates(coords.long())
        if single:
            z = z.unsqueeze(0)  # the N spots form one sequence
        for block in self.blocks:
            z = block(z, key_padding_mask)
        return z.squeeze(0) if single else z

    def extra_repr(self) -> str:
        return f"n_genes={self.n_genes}, n_x={self.n_x}, n_y={self.n_y}, out_of_range={self.out_of_range!r}"
