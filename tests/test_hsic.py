"""HSIC, normalised HSIC and the HSIC bottleneck."""
from __future__ import annotations

import math

import pytest
import torch

from stgraph.losses import HSICBottleneck, gaussian_kernel, hsic, hsic_bottleneck, nhsic


def _manual_hsic_1d(a, b, sigma):
    """tr(K_A H K_B H) / (n−1)² with explicit loops over 1-D samples."""
    n = len(a)
    ka = [[math.exp(-((x - y) ** 2) / sigma**2) for y in a] for x in a]
    kb = [[math.exp(-((x - y) ** 2) / sigma**2) for y in b] for x in b]
    h = [[(1.0 if i == j else 0.0) - 1.0 / n for j in range(n)] for i in range(n)]

    def mm(p, q):
        return [[sum(p[i][k] * q[k][j] for k in range(n)) for j in range(n)] for i in range(n)]

    prod = mm(mm(mm(ka, h), kb), h)
    return sum(prod[i][i] for i in range(n)) / (n - 1) ** 2


def _col(values):
    return torch.tensor(values, dtype=torch.float64).unsqueeze(1)


def test_gaussian_kernel_uses_sigma_squared():
    x = _col([0.0, 2.0])
    k = gaussian_kernel(x, sigma=2.0)
    assert float(k[0, 1]) == pytest.approx(math.exp(-1.0), abs=1e-12)   # exp(−4/σ²), not exp(−4/(2σ²))
    assert torch.allclose(torch.diagonal(k), torch.ones(2, dtype=torch.float64))


def test_hsic_matches_hand_computation_3x1():
    a, b, sigma = [0.0, 1.0, 3.0], [1.0, 0.0, 2.0], 2.0
    expected_ab = _manual_hsic_1d(a, b, sigma)
    assert float(hsic(_col(a), _col(b), sigma)) == pytest.approx(expected_ab, abs=1e-10)
    expected_aa, expected_bb = _manual_hsic_1d(a, a, sigma), _manual_hsic_1d(b, b, sigma)
    expected_n = expected_ab / math.sqrt((1 + expected_aa) * (1 + expected_bb))
    assert float(nhsic(_col(a), _col(b), sigma)) == pytest.approx(expected_n, abs=1e-10)


def test_independent_samples_small_dependent_clearly_positive():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 1, generator=g)
    independent = torch.randn(200, 1, generator=g)
    dependent = a**2 + 0.1 * torch.randn(200, 1, generator=g)   # uncorrelated with a, but dependent
    n_ind, n_dep = float(nhsic(a, independent, 1.0)), float(nhsic(a, dependent, 1.0))
    assert 0 <= n_ind < 0.006
    assert n_dep > 0.02 and n_dep > 8 * n_ind
    assert float(nhsic(a, a, 1.0)) >= n_dep


def test_self_dependence_is_largest():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(60, 3, generator=g)
    b = a[:, :1] + torch.randn(60, 2, generator=g)
    assert float(nhsic(a, a, 2.0)) >= float(nhsic(a, b, 2.0))


def test_invariant_to_joint_row_permutation_and_scale_with_sigma():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(40, 3, generator=g), torch.randn(40, 5, generator=g)
    b = b + a.sum(1, keepdim=True)
    perm = torch.randperm(40, generator=g)
    assert float(hsic(a[perm], b[perm], 2.0)) == pytest.approx(float(hsic(a, b, 2.0)), rel=1e-5)
    # k(cx, cy; cσ) = k(x, y; σ): scaling data and σ together leaves HSIC unchanged.
    assert float(nhsic(10 * a, 10 * b, 20.0)) == pytest.approx(float(nhsic(a, b, 2.0)), rel=1e-4)


def test_extra_dimensions_are_flattened():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(10, 2, 3, generator=g), torch.randn(10, 4, generator=g)
    assert float(hsic(a, b, 3.0)) == pytest.approx(float(hsic(a.reshape(10, 6), b, 3.0)), rel=1e-6)


def test_tiny_samples():
    one = torch.ones(1, 3, requires_grad=True)
    value = nhsic(one, torch.zeros(1, 2))
    assert value.item() == 0.0
    value.backward()                      # still part of the graph
    assert one.grad is not None and torch.all(one.grad == 0)
    assert hsic_bottleneck(one, one, one).item() == 0.0
    # n = 2: HSIC = (1 − k_a)(1 − k_b) exactly.
    a, b = _col([0.0, 1.0]), _col([0.0, 3.0])
    expected = (1 - math.exp(-1 / 4)) * (1 - math.exp(-9 / 4))
    assert float(hsic(a, b, 2.0)) == pytest.approx(expected, abs=1e-12)


def test_bottleneck_formula_and_module():
    g = torch.Generator().manual_seed(4)
    x, z, p = torch.randn(30, 8, generator=g), torch.randn(30, 4, generator=g), torch.randn(30, 2, generator=g)
    expected = float(nhsic(x, z, 3.0)) - 25.0 * float(nhsic(z, p, 3.0))
    assert float(hsic_bottleneck(x, z, p, beta=25.0, sigma=3.0)) == pytest.approx(expected, rel=1e-6)
    assert float(HSICBottleneck(beta=25.0, sigma=3.0)(x, z, p)) == pytest.approx(expected, rel=1e-6)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="same number of samples"):
        hsic(torch.zeros(4, 2), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="sigma"):
        HSICBottleneck(sigma=0.0)
