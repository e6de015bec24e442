"""Fine-tuning only the last backbone stage on cached stage inputs (model.image_encoder.cache_stage_input)."""
import numpy as np
import pytest
import timm
import torch

from stgraph.models.image_encoders import TimmImageEncoder, _last_stage_names, split_last_stage


@pytest.mark.parametrize("backbone,side", [("test_resnet", 64), ("test_efficientnet", 64), ("test_vit", 160)])
def test_trunk_then_tail_is_the_backbone_and_the_tail_holds_the_trainable_stage(backbone, side):
    model = timm.create_model(backbone, pretrained=False, num_classes=0).eval()
    trunk, tail = split_last_stage(model)
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        assert torch.allclose(tail(trunk(x)), model(x), atol=1e-5)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in tail.parameters()) == sorted(_last_stage_names(model))


def test_unsupported_backbone_is_named():
    with pytest.raises(ValueError, match="DenseNet"):
        split_last_stage(timm.create_model("densenet121", pretrained=False, num_classes=0))


def test_encoder_state_dict_keeps_timm_names():
    enc = TimmImageEncoder("test_resnet", pretrained=False, freeze="all_but_last_stage").eval()
    before = list(enc.state_dict())
    enc.forward_tail(enc.forward_trunk(torch.randn(1, 3, 32, 32)))
    assert list(enc.state_dict()) == before


def test_stgchb_trains_the_last_stage_on_cached_stage_inputs(tiny_config, synthetic_slides):
    from stgraph.inference import predict_slide
    from stgraph.training import train_model

    config = tiny_config("stgchb.yaml", "model.image_encoder.cache_stage_input=true", "train.epochs=2")
    assert config.model.image_encoder.freeze == "all_but_last_stage"
    train = list(synthetic_slides[:2])
    torch.manual_seed(0)
    from stgraph.models import create_model

    initial = create_model(config, 8).image_encoder.state_dict()
    run = train_model(config, train)
    enc = run.model.image_encoder
    trainable = set(_last_stage_names(enc.model))
    changed = {k for k, v in enc.model.state_dict().items()
               if v.dtype.is_floating_point and not torch.equal(v, initial["model." + k])}
    params = {n for n, _ in enc.model.named_parameters()}
    assert changed & trainable, "the last stage did not learn"
    assert not (changed & params) - trainable, "a frozen stage changed"
    log = run.result.history.query("split == 'train'")
    assert np.isfinite(log["total"]).all() and log["total"].nunique() == len(log)
    pred = predict_slide(run, synthetic_slides[2])
    assert np.isfinite(pred.X).all()


def test_cache_stage_input_needs_last_stage_fine_tuning(tiny_config):
    with pytest.raises(ValueError, match="all_but_last_stage"):
        tiny_config("cpu/stgchb.yaml", "model.image_encoder.cache_stage_input=true",
                    "model.image_encoder.cache_features=false")
