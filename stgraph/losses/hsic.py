r"""Hilbert–Schmidt independence criterion and ST-GCHB's nHSIC bottleneck.

.. math::
    k(x, y) = \exp\big(-\lVert x - y\rVert^2 / \sigma^2\big), \qquad H = I - \tfrac1n \mathbf{1}\mathbf{1}^\top,

    \mathrm{HSIC}(A, B) = \frac{\mathrm{tr}(K_A H K_B H)}{(n-1)^2}, \qquad
    \mathrm{nHSIC}(A, B) = \frac{\mathrm{HSIC}(A, B)}{\sqrt{(1 + \mathrm{HSIC}(A, A))(1 + \mathrm{HSIC}(B, B))}}

Note the kernel divides by ``σ²`` (not ``2σ²``), as in ST-GCHB. Inputs are (n, d) with rows paired
across arguments; any further dimensions are flattened into the feature axis and 1-D inputs are read as
(n, 1). HSIC needs two samples to be defined: with ``n < 2`` every function here returns an exact zero
(still attached to the autograd graph, so a total that contains it can be back-propagated). ``n = 2`` is
computed by the formula. Half-precision inputs are computed in float32.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["gaussian_kernel", "center_kernel", "hsic", "nhsic", "hsic_bottleneck", "HSICBottleneck"]


def _as_matrix(x: torch.Tensor, name: str) -> torch.Tensor:
    """(n, ...) → (n, d) in at least float32."""
    if x.dim() == 0:
        raise ValueError(f"{name} must have a sample axis, got a scalar")
    x = x.reshape(x.size(0), -1) if x.dim() != 1 else x.unsqueeze(1)
    if x.dtype in (torch.float16, torch.bfloat16) or not x.is_floating_point():
        x = x.float()
    return x


def _check_sigma(sigma: float) -> None:
    if not sigma > 0:
        raise ValueError(f"kernel width sigma must be > 0, got {sigma}")


def _zero_like_graph(*tensors: torch.Tensor) -> torch.Tensor:
    """An exact 0 that depends on ``tensors`` so autograd still reaches them."""
    return sum(t.sum() for t in tensors) * 0.0


def gaussian_kernel(x: torch.Tensor, sigma: float = 10.0) -> torch.Tensor:
    r"""Gaussian Gram matrix :math:`K_{ij} = \exp(-\lVert x_i - x_j\rVert^2 / \sigma^2)`; (n, d) → (n, n)."""
    _check_sigma(sigma)
    x = _as_matrix(x, "x")
    sq_norms = (x * x).sum(dim=1)
    # ||xi||² + ||xj||² − 2 xi·xj keeps memory at O(n²); clamp the tiny negatives of float round-off.
    sq_dist = (sq_norms[:, None] + sq_norms[None, :] - 2.0 * (x @ x.T)).clamp_min(0.0)
    return torch.exp(-sq_dist / sigma**2)


def center_kernel(k: torch.Tensor) -> torch.Tensor:
    r""":math:`H K H` with :math:`H = I - \frac1n\mathbf{1}\mathbf{1}^\top`, without forming H; (n, n) → (n, n)."""
    return k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()


def _hsic_from_kernels(k_a: torch.Tensor, k_b: torch.Tensor) -> torch.Tensor:
    n = k_a.size(0)
    # tr(K_A H K_B H) = Σ_ij (H K_A H)_ij (K_B)_ji, and K_B is symmetric.
    return (center_kernel(k_a) * k_b).sum() / (n - 1) ** 2


def _paired(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _as_matrix(a, "a"), _as_matrix(b, "b")
    if a.size(0) != b.size(0):
        raise ValueError(f"HSIC needs the same number of samples (rows) in both inputs, got {a.size(0)} and "
                         f"{b.size(0)}")
    return a, b


def hsic(a: torch.Tensor, b: torch.Tensor, sigma: float = 10.0) -> torch.Tensor:
    r"""Biased HSIC estimate :math:`\mathrm{tr}(K_A H K_B H)/(n-1)^2`.

    Shapes: ``a`` (n, d_a), ``b`` (n, d_b) → (). Returns 0 for ``n < 2``.
    """
    _check_sigma(sigma)
    a, b = _paired(a, b)
    if a.size(0) < 2:
        return _zero_like_graph(a, b)
    return _hsic_from_kernels(gaussian_kernel(a, sigma), gaussian_kernel(b, sigma))


def nhsic(a: torch.Tensor, b: torch.Tensor, sigma: float = 10.0) -> torch.Tensor:
    r"""Normalised HSIC :math:`\mathrm{HSIC}(A,B)/\sqrt{(1+\mathrm{HSIC}(A,A))(1+\mathrm{HSIC}(B,B))}`.

    Shapes: ``a`` (n, d_a), ``b`` (n, d_b) → (). Returns 0 for ``n < 2``.
    """
    _check_sigma(sigma)
    a, b = _paired(a, b)
    if a.size(0) < 2:
        return _zero_like_graph(a, b)
    k_a, k_b = gaussian_kernel(a, sigma), gaussian_kernel(b, sigma)
    hsic_ab = _hsic_from_kernels(k_a, k_b)
    hsic_aa = _hsic_from_kernels(k_a, k_a)
    hsic_bb = _hsic_from_kernels(k_b, k_b)
    return hsic_ab / torch.sqrt((1 + hsic_aa) * (1 + hsic_bb))


def hsic_bottleneck(x_in: torch.Tensor, z: torch.Tensor, p: torch.Tensor, beta: float = 25.0,
                    sigma: float = 10.0) -> torch.Tensor:
    r"""ST-GCHB's per-branch bottleneck :math:`\mathrm{nHSIC}(X_{in}, Z) - \beta\,\mathrm{nHSIC}(Z, P)`.

    Minimising it compresses the branch input out of the representation ``Z`` while keeping what the
    aligned projection ``P`` needs. Shapes: ``x_in`` (n, d_x), ``z`` (n, d_z), ``p`` (n, d_p) → ().
    """
    return nhsic(x_in, z, sigma) - beta * nhsic(z, p, sigma)


class HSICBottleneck(nn.Module):
    """Module form of :func:`hsic_bottleneck`; ``forward(x_in, z, p) -> ()``."""

    def __init__(self, beta: float = 25.0, sigma: float = 10.0):
        super().__init__()
        _check_sigma(sigma)
        self.beta, self.sigma = float(beta), float(sigma)

    def forward(self, x_in: torch.Tensor, z: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return hsic_bottleneck(x_in, z, p, self.beta, self.sigma)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, sigma={self.sigma}"
