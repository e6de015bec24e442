"""Projection head, MLP and the spot transformer."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stgraph.nn import MLP, ProjHead, SpotTransformer


def test_proj_head_formula():
    torch.manual_seed(0)
    head = ProjHead(5, 3, dropout=0.5).eval()
    x = torch.randn(4, 5)
    h1 = x @ head.projection.weight.T + head.projection.bias
    gelu = 0.5 * h1 * (1 + torch.erf(h1 / 2**0.5))
    h = gelu @ head.fc.weight.T + head.fc.bias
    r = h1 + h
    mu, var = r.mean(-1, keepdim=True), r.var(-1, unbiased=False, keepdim=True)
    expected = (r - mu) / torch.sqrt(var + 1e-5) * head.layer_norm.weight + head.layer_norm.bias
    assert head(x).shape == (4, 3)
    assert torch.allclose(head(x), expected, atol=1e-5)


def test_proj_head_dropout_only_in_training():
    torch.manual_seed(0)
    head = ProjHead(5, 16, dropout=0.5)
    x = torch.randn(8, 5)
    assert not torch.allclose(head.train()(x), head.eval()(x))


def test_mlp_structure_and_formula():
    torch.manual_seed(0)
    mlp = MLP(6, [8, 4], 2, activation="relu").eval()
    linears = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(6, 8), (8, 4), (4, 2)]
    x = torch.randn(3, 6)
    expected = linears[2](F.relu(linears[1](F.relu(linears[0](x)))))
    assert torch.allclose(mlp(x), expected, atol=1e-6)
    assert MLP(6, [], 2)(x).shape == (3, 2)
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        MLP(6, [8], 2, activation="swish")


def _transformer(**kw):
    torch.manual_seed(0)
    return SpotTransformer(12, 10, 9, depth=2, heads=2, dim_head=8, **kw).eval()


def _spots(n=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    expr = torch.randn(n, 12, generator=g)
    coords = torch.stack([torch.randint(0, 10, (n,), generator=g), torch.randint(0, 9, (n,), generator=g)], 1)
    return expr, coords


def test_spot_transformer_shape_and_permutation_equivariance():
    model = _transformer()
    expr, coords = _spots()
    out = model(expr, coords)
    assert out.shape == (7, 12)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(model(expr[perm], coords[perm]), out[perm], atol=1e-5)


def test_spot_transformer_attends_across_spots_and_uses_coordinates():
    model = _transformer()
    expr, coords = _spots()
    out = model(expr, coords)
    moved = coords.clone()
    moved[0] = torch.tensor([(int(coords[0, 0]) + 1) % 10, int(coords[0, 1])])
    changed = model(expr, moved)
    assert not torch.allclose(changed[0], out[0], atol=1e-4)
    # Attention mixes spots: moving spot 0 also changes the other spots' outputs.
    assert not torch.allclose(changed[1:], out[1:], atol=1e-6)
    moved_y = coords.clone()
    moved_y[:, 1] = (coords[:, 1] + 1) % 9
    assert not torch.allclose(model(expr, moved_y), out, atol=1e-4)


def test_spot_transformer_embedding_sum():
    model = SpotTransformer(12, 10, 9, depth=0)
    expr, coords = _spots()
    expected = expr + model.x_embed.weight[coords[:, 0]] + model.y_embed.weight[coords[:, 1]]
    assert torch.allclose(model(expr, coords), expected)


def test_spot_transformer_batched_and_padding_mask():
    model = _transformer()
    expr, coords = _spots(5)
    single = model(expr, coords)
    padded_expr = torch.cat([expr, torch.randn(2, 12)]).unsqueeze(0).repeat(2, 1, 1)
    padded_coords = torch.cat([coords, torch.zeros(2, 2, dtype=torch.long)]).unsqueeze(0).repeat(2, 1, 1)
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[:, 5:] = True
    out = model(padded_expr, padded_coords, key_padding_mask=mask)
    assert out.shape == (2, 7, 12)
    assert torch.allclose(out[0, :5], single, atol=1e-5) and torch.allclose(out[1, :5], single, atol=1e-5)
    unmasked = model(padded_expr, padded_coords)
    assert not torch.allclose(unmasked[0, :5], single, atol=1e-4)


def test_spot_transformer_batch_equals_separate_sequences():
    model = _transformer()
    a, ca = _spots(6, seed=4)
    b, cb = _spots(6, seed=5)
    out = model(torch.stack([a, b]), torch.stack([ca, cb]))
    assert out.shape == (2, 6, 12)
    assert torch.allclose(out[0], model(a, ca), atol=1e-5) and torch.allclose(out[1], model(b, cb), atol=1e-5)


def test_spot_transformer_dropout_only_in_training():
    model = _transformer(dropout=0.5)
    expr, coords = _spots()
    evaluated = model(expr, coords)
    assert torch.allclose(model(expr, coords), evaluated)      # eval mode is deterministic
    torch.manual_seed(0)
    assert not torch.allclose(model.train()(expr, coords), evaluated, atol=1e-4)


def test_spot_transformer_out_of_range_coordinates():
    expr, coords = _spots()
    far = coords.clone()
    far[0] = torch.tensor([25, -3])
    clamped = coords.clone()
    clamped[0] = torch.tensor([9, 0])
    model = _transformer()
    assert torch.allclose(model(expr, far), model(expr, clamped))
    strict = _transformer(out_of_range="raise")
    with pytest.raises(ValueError, match=r"x coordinates span \[\d+, 25\].*10 rows"):
        strict(expr, far)


def test_spot_transformer_bad_inputs():
    model = _transformer()
    expr, coords = _spots()
    with pytest.raises(ValueError, match="integer grid coordinates"):
        model(expr, coords.float())
    with pytest.raises(ValueError, match=r"\(N, 12\)"):
        model(torch.randn(7, 11), coords)
    with pytest.raises(ValueError, match="coords must have shape"):
        model(expr, coords[:, :1])
