"""Model composition: every config builds and trains one step; encoders and freeze policies."""
import numpy as np
import pytest
import torch

from stgraph.models import SPOT_ENCODERS, TimmImageEncoder, create_model, create_spot_encoder
from stgraph.losses import Objective
from stgraph.training import Trainer, fit_preprocessor, prepare_slide
from tests.conftest import MOBILENET, TRAINED_CONFIGS, require_shared


def _prepared(config, slides):
    prep, expr = fit_preprocessor(config, slides)
    model = create_model(config, prep.spot_in_dim)
    prepared = [prepare_slide(ad, config, prep, expr=expr[ad.obs["slide_id"].iloc[0]],
                              image_encoder=model.image_encoder) for ad in slides]
    return model, prepared


@pytest.mark.parametrize("name", TRAINED_CONFIGS)
def test_every_config_builds_and_takes_a_training_step(name, tiny_config, synthetic_slides):
    config = tiny_config(name, "train.epochs=1", "train.val_fraction=0")
    model, prepared = _prepared(config, synthetic_slides[:2])
    before = {k: v.clone() for k, v in model.state_dict().items() if v.dtype.is_floating_point}
    result = Trainer(model, config, prepared).fit()
    history = result.history
    assert np.isfinite(history["total"]).all()
    # every enabled module contributes a logged term
    expected = set(Objective.from_config(config).all_weights())
    assert expected <= set(history.columns)
    changed = [k for k, v in model.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert any(k.startswith("spot_head") for k in changed) and any(k.startswith("image_head") for k in changed)


def test_stgchb_terms_follow_the_switches(tiny_config, synthetic_slides):
    full = tiny_config("stgchb.yaml")
    model, _ = _prepared(full, synthetic_slides[:1])
    assert set(Objective.from_config(full).all_weights()) == {"align", "dgi_image", "dgi_spot", "hsic_spot",
                                                              "hsic_image"}
    ablated = tiny_config("stgchb.yaml", "model.hsic.enabled=false", "model.image_dgi.enabled=false")
    model, _ = _prepared(ablated, synthetic_slides[:1])
    objective = Objective.from_config(ablated)
    assert set(objective.all_weights()) == {"align", "dgi_spot"}
    assert model.image_dgi is None and objective.hsic is None


def test_dgi_without_slide_batching_is_rejected(tiny_config):
    with pytest.raises(ValueError, match="batching=slide"):
        create_model(tiny_config("stgchb.yaml", "train.batching=spot"), spot_in_dim=8)


def test_unknown_spot_encoder_lists_choices():
    with pytest.raises(KeyError, match=r"valid choices: \[.*'identity'"):
        create_spot_encoder(10, "gru")
    assert {"identity", "mlp", "transformer"} <= set(SPOT_ENCODERS.names())


def test_transformer_encoder_uses_coordinates():
    enc = create_spot_encoder(12, "transformer", {"heads": 2, "dim_head": 4, "max_coord": 16}).eval()
    x = torch.randn(6, 12)
    coords = torch.randint(0, 16, (6, 2))
    moved = coords.clone()
    moved[0] = (moved[0] + 3) % 16
    assert not torch.allclose(enc(x, coords), enc(x, moved))


@pytest.mark.parametrize("policy,expect_trainable", [("all", 0), ("none", None), ("all_but_last_stage", "last")])
def test_freeze_policies(policy, expect_trainable):
    enc = TimmImageEncoder("test_resnet", pretrained=False, freeze=policy)
    trainable = [n for n, p in enc.model.named_parameters() if p.requires_grad]
    total = [n for n, _ in enc.model.named_parameters()]
    if expect_trainable == 0:
        assert trainable == []
    elif expect_trainable is None:
        assert trainable == total
    else:
        assert trainable and all(n.startswith("layer4") for n in trainable)
        assert len(trainable) < len(total)


def test_frozen_backbone_keeps_batchnorm_statistics():
    enc = TimmImageEncoder("test_resnet", pretrained=False, freeze="all")
    enc.train()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    enc(torch.randn(4, 3, 32, 32))
    assert all(torch.equal(v, before[k]) for k, v in enc.state_dict().items())


def test_local_pretrained_weights_load_offline():
    path = require_shared(MOBILENET)
    enc = TimmImageEncoder("mobilenetv2_100", pretrained=True, weights=str(path), freeze="all")
    state = torch.load(path, map_location="cpu")
    key = next(k for k in state if k.endswith("weight") and state[k].ndim == 4)
    assert torch.equal(enc.model.state_dict()[key], state[key])
    assert enc.num_features == 1280


def test_missing_and_corrupt_weights_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        TimmImageEncoder("test_resnet", weights=str(tmp_path / "nothere.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="bad.pth"):
        TimmImageEncoder("test_resnet", weights=str(bad))


def test_unknown_backbone():
    with pytest.raises(ValueError, match="unknown timm backbone"):
        TimmImageEncoder("resnet_does_not_exist", pretrained=False)
