"""Contrastive losses, the loss registry and the composite loss."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stgraph.losses import (LOSSES, BLEEPLoss, CLIPLoss, CompositeLoss, HECLIPLoss, bleep_loss, clip_loss,
                            create_loss, heclip_loss, register_loss)

# Tiny 3×2 embeddings; expected values are computed below with plain Python loops.
I_NP = np.array([[0.5, -1.0], [1.2, 0.3], [-0.4, 0.8]])
S_NP = np.array([[0.9, -0.2], [0.1, 0.7], [-1.1, 0.4]])


def _t(a):
    return torch.tensor(a, dtype=torch.float64)


def _dot(u, v):
    return sum(a * b for a, b in zip(u, v))


def _gram(a, b, tau):
    return [[_dot(a[i], b[j]) / tau for j in range(len(b))] for i in range(len(a))]


def _softmax_row(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def _log_softmax_row(row):
    m = max(row)
    lse = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - lse for v in row]


def _transpose(m):
    return [list(r) for r in zip(*m)]


def _soft_ce_rows(logits, targets):
    return [-sum(t * l for t, l in zip(trow, _log_softmax_row(lrow))) for lrow, trow in zip(logits, targets)]


def _manual_clip(img, spot, tau):
    logits = _gram(spot, img, tau)                       # S I^T
    eye = [[float(i == j) for j in range(len(img))] for i in range(len(img))]
    a = _soft_ce_rows(logits, eye)
    b = _soft_ce_rows(_transpose(logits), eye)
    return sum((x + y) / 2 for x, y in zip(a, b)) / len(a)


def _manual_bleep(img, spot, tau):
    logits = _gram(spot, img, tau)
    ii, ss = _gram(img, img, 1.0), _gram(spot, spot, 1.0)
    sim = [[(ii[i][j] + ss[i][j]) / 2 / tau for j in range(len(img))] for i in range(len(img))]
    targets = [_softmax_row(r) for r in sim]
    a = _soft_ce_rows(logits, targets)
    b = _soft_ce_rows(_transpose(logits), _transpose(targets))
    return sum((x + y) / 2 for x, y in zip(a, b)) / len(a)


def _manual_heclip(img, spot, tau):
    logits = _gram(spot, img, tau)
    targets = [_softmax_row(r) for r in _gram(img, img, tau)]
    rows = _soft_ce_rows(_transpose(logits), _transpose(targets))
    return sum(rows) / len(rows)


@pytest.mark.parametrize("tau", [1.0, 0.5])
@pytest.mark.parametrize("fn, manual", [(clip_loss, _manual_clip), (bleep_loss, _manual_bleep),
                                        (heclip_loss, _manual_heclip)])
def test_losses_match_hand_computation(fn, manual, tau):
    expected = manual(I_NP.tolist(), S_NP.tolist(), tau)
    got = float(fn(_t(I_NP), _t(S_NP), temperature=tau))
    assert got == pytest.approx(expected, abs=1e-5)


def test_clip_value_for_orthogonal_pairs():
    # I = S = e1, e2: logits = eye, each row's CE = −log(e / (e + 1)).
    eye = torch.eye(2)
    assert float(clip_loss(eye, eye)) == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-6)


def test_clip_is_symmetric():
    g = torch.Generator().manual_seed(0)
    img, spot = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    assert float(clip_loss(img, spot)) == pytest.approx(float(clip_loss(spot, img)), abs=1e-6)


def test_bleep_swap_transposes_its_targets():
    """Swapping I and S transposes the logits while the (row-softmax) targets stay, so the swapped loss
    equals the loss with transposed targets; it is not the same number unless the targets are symmetric."""
    img, spot = _t(I_NP), _t(S_NP)
    logits = spot @ img.T
    targets = torch.softmax((img @ img.T + spot @ spot.T) / 2, -1)

    def ce(p, t):
        return (-t * torch.log_softmax(p, -1)).sum(-1)

    swapped = ((ce(logits, targets.T) + ce(logits.T, targets)) / 2).mean()
    assert float(bleep_loss(spot, img)) == pytest.approx(float(swapped), abs=1e-10)
    # The symmetrised form (both CE directions) is what makes the swap only transpose the targets.
    forward = ((ce(logits, targets) + ce(logits.T, targets.T)) / 2).mean()
    assert float(bleep_loss(img, spot)) == pytest.approx(float(forward), abs=1e-10)


def test_bleep_swap_changes_value_unless_targets_are_symmetric():
    img, spot = _t(I_NP), _t(S_NP)
    # Generic embeddings: the row-softmax targets are not a symmetric matrix, so the swap changes the value.
    assert abs(float(bleep_loss(img, spot)) - float(bleep_loss(spot, img))) > 1e-3
    # Unit vectors at the angles of a regular polygon (spots rotated by a fixed angle): both Gram matrices
    # are circulant, every softmax row has the same normaliser, the targets are symmetric and so is the loss.
    angles = torch.arange(5, dtype=torch.float64) * 2 * math.pi / 5
    ring_img = torch.stack([torch.cos(angles), torch.sin(angles)], 1) * 2
    ring_spot = torch.stack([torch.cos(angles + 0.4), torch.sin(angles + 0.4)], 1) * 2
    targets = torch.softmax((ring_img @ ring_img.T + ring_spot @ ring_spot.T) / 2, -1)
    assert torch.allclose(targets, targets.T, atol=1e-12)
    assert float(bleep_loss(ring_img, ring_spot)) == pytest.approx(float(bleep_loss(ring_spot, ring_img)),
                                                                   abs=1e-10)
    # CLIP has no targets to transpose: symmetric on the generic pair too.
    assert float(clip_loss(img, spot)) == pytest.approx(float(clip_loss(spot, img)), abs=1e-10)


@pytest.mark.parametrize("fn", [clip_loss, bleep_loss, heclip_loss])
def test_gradient_reaches_both_branches(fn):
    img, spot = _t(I_NP).requires_grad_(True), _t(S_NP).requires_grad_(True)
    fn(img, spot).backward()
    assert img.grad.abs().sum() > 1e-3 and spot.grad.abs().sum() > 1e-3


def test_detached_heclip_targets_leave_only_the_logit_path():
    """With constant targets the image gradient is that of CE(L^T, T^T) through the logits alone."""
    img, spot = _t(I_NP).requires_grad_(True), _t(S_NP)
    grad = torch.autograd.grad(heclip_loss(img, spot, detach_targets=True), img)[0]
    targets = torch.softmax(_t(I_NP) @ _t(I_NP).T, -1)
    # d/dI of mean_i CE(I_i S^T, T^T_i) = (c ⊙ softmax(I S^T) − T^T) S / B, with c_i = Σ_j T_ji the
    # column sums of T (the rows of T^T need not sum to 1).
    column_sums = targets.sum(0, keepdim=True).T
    expected = (column_sums * torch.softmax(_t(I_NP) @ spot.T, -1) - targets.T) @ spot / 3
    assert torch.allclose(grad, expected, atol=1e-10)


def test_heclip_is_one_directional():
    img = _t(I_NP).requires_grad_(True)
    spot = _t(S_NP).requires_grad_(True)
    loss = heclip_loss(img, spot)
    # Value changes under a swap (no symmetric spot-side term).
    assert abs(loss.item() - heclip_loss(spot, img).item()) > 1e-3
    # The same single direction written out: CE((S I^T)^T, softmax(I I^T)^T).
    img2, spot2 = _t(I_NP).requires_grad_(True), _t(S_NP).requires_grad_(True)
    logits = spot2 @ img2.T
    targets = torch.softmax(img2 @ img2.T, -1)
    manual = (-targets.T * torch.log_softmax(logits.T, -1)).sum(-1).mean()
    loss.backward()
    manual.backward()
    assert torch.allclose(spot.grad, spot2.grad, atol=1e-10)
    assert torch.allclose(img.grad, img2.grad, atol=1e-10)
    # A BLEEP-style extra spot-side term would change the spot gradient.
    img3, spot3 = _t(I_NP).requires_grad_(True), _t(S_NP).requires_grad_(True)
    logits3 = spot3 @ img3.T
    t3 = torch.softmax(img3 @ img3.T, -1)
    both = ((-t3.T * torch.log_softmax(logits3.T, -1)).sum(-1) + (-t3 * torch.log_softmax(logits3, -1)).sum(-1))
    (both.mean() / 2).backward()
    assert not torch.allclose(spot.grad, spot3.grad, atol=1e-4)


def test_targets_are_not_detached_by_default():
    img = _t(I_NP).requires_grad_(True)
    spot = _t(S_NP)
    g_default = torch.autograd.grad(bleep_loss(img, spot), img)[0]
    g_detached = torch.autograd.grad(bleep_loss(img, spot, detach_targets=True), img)[0]
    assert not torch.allclose(g_default, g_detached, atol=1e-6)


@pytest.mark.parametrize("fn", [clip_loss, bleep_loss, heclip_loss])
def test_aligned_pairs_score_lower_than_shuffled(fn):
    g = torch.Generator().manual_seed(1)
    img = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=1) * 3
    spot = img + 0.05 * torch.randn(16, 8, generator=g)
    shuffled = spot[torch.roll(torch.arange(16), 1)]
    assert float(fn(img, spot)) < float(fn(img, shuffled)) - 0.5


@pytest.mark.parametrize("fn", [clip_loss, bleep_loss, heclip_loss])
def test_joint_row_permutation_invariance(fn):
    g = torch.Generator().manual_seed(2)
    img, spot = torch.randn(7, 3, generator=g), torch.randn(7, 3, generator=g)
    perm = torch.randperm(7, generator=g)
    assert float(fn(img[perm], spot[perm])) == pytest.approx(float(fn(img, spot)), abs=1e-5)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="same width"):
        clip_loss(torch.zeros(3, 2), torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"\(B, d\)"):
        bleep_loss(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="temperature"):
        HECLIPLoss(temperature=0.0)


def test_modules_match_functions():
    g = torch.Generator().manual_seed(3)
    img, spot = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    for cls, fn in [(CLIPLoss, clip_loss), (BLEEPLoss, bleep_loss), (HECLIPLoss, heclip_loss)]:
        assert float(cls(temperature=0.7)(img, spot)) == pytest.approx(float(fn(img, spot, 0.7)), abs=1e-7)


# ----------------------------------------------------------------------------------------------- registry
def test_registry_creates_by_name():
    loss = create_loss("bleep", temperature=0.5)
    assert isinstance(loss, BLEEPLoss) and loss.temperature == 0.5
    assert set(LOSSES) >= {"clip", "bleep", "heclip"}


def test_registry_unknown_name_lists_choices():
    with pytest.raises(KeyError, match=r"unknown loss 'bleeep'.*bleep.*clip.*heclip"):
        create_loss("bleeep")
    with pytest.raises(ValueError, match="valid choices"):
        create_loss("nope")


def test_register_loss_decorator():
    @register_loss("test_zero")
    class ZeroLoss(torch.nn.Module):
        def forward(self, image_emb, spot_emb):
            return (image_emb * 0).sum()

    try:
        assert isinstance(create_loss("test_zero"), ZeroLoss)
        with pytest.raises(ValueError, match="already registered"):
            register_loss("test_zero")(CLIPLoss)
    finally:
        LOSSES.unregister("test_zero")


# ---------------------------------------------------------------------------------------------- composite
def test_composite_weights_and_logs():
    composite = CompositeLoss({"align": 1.0, "hsic_spot": 0.5, "dgi_spot": 0.0})
    x = torch.tensor(2.0, requires_grad=True)
    terms = {"align": x * 1.5, "hsic_spot": torch.tensor(-4.0), "dgi_spot": torch.tensor(10.0),
             "extra": torch.tensor(7.0)}
    total, logs = composite(terms)
    assert total.item() == pytest.approx(3.0 + 0.5 * -4.0)
    assert logs == pytest.approx({"align": 3.0, "hsic_spot": -4.0, "dgi_spot": 10.0, "extra": 7.0,
                                  "total": 1.0})
    total.backward()
    assert float(x.grad) == pytest.approx(1.5)
    assert composite.is_active("align") and not composite.is_active("dgi_spot")
    assert not composite.is_active("extra")
    assert composite.active_terms == ["align", "hsic_spot"]


def test_composite_without_active_terms_is_zero():
    total, logs = CompositeLoss({"align": 0.0})({"align": torch.tensor(5.0)})
    assert float(total) == 0.0 and logs == {"align": 5.0, "total": 0.0}


def test_composite_rejects_bad_input():
    with pytest.raises(ValueError, match="finite"):
        CompositeLoss({"align": float("nan")})
    with pytest.raises(ValueError, match="scalar"):
        CompositeLoss({"align": 1.0})({"align": torch.ones(3)})
    with pytest.raises(ValueError, match="no loss terms"):
        CompositeLoss({"align": 1.0})({})


# ---------------------------------------------------------------------------------------------- objective
def test_objective_weights_and_dgi_pretraining_schedule(tiny_config):
    from stgraph.losses import Objective

    cfg = tiny_config("stgchb.yaml", "model.spot_dgi.pretrain_epochs=2", "model.image_dgi.pretrain_epochs=1",
                      "model.spot_dgi.weight=0.5")
    objective = Objective.from_config(cfg)
    assert objective.weights(0) == {"dgi_image": 1.0, "dgi_spot": 0.5}
    assert objective.weights(1) == {"dgi_spot": 0.5}
    assert objective.weights(2) == objective.weights(None) == objective.all_weights()
    assert set(objective.all_weights()) == {"align", "dgi_image", "dgi_spot", "hsic_spot", "hsic_image"}


def test_cross_field_config_errors_at_load_time(tiny_config):
    from stgraph.config import ConfigError

    with pytest.raises(ConfigError, match="batching=slide"):
        tiny_config("stgchb.yaml", "train.batching=spot")
    with pytest.raises(ConfigError, match="freeze=all"):
        tiny_config("bleep.yaml", "model.image_encoder.cache_features=true")
