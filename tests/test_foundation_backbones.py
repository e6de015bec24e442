"""Pathology foundation-model configs, tested with a randomly initialised tiny ViT (no download)."""
import numpy as np
import pytest
import torch

from tests.conftest import CONFIGS

FOUNDATION = ["foundation/uni.yaml", "foundation/gigapath.yaml", "foundation/stgchb_uni.yaml"]


@pytest.mark.parametrize("name", FOUNDATION)
def test_configs_name_a_hub_id_and_its_architecture(name):
    import timm

    from stgraph.config import load_config

    cfg = load_config(CONFIGS / name).model.image_encoder
    assert cfg.backbone.startswith("hf-hub:") and timm.is_model(cfg.architecture)


def test_hub_id_offline_needs_the_architecture():
    from stgraph.models.image_encoders import TimmImageEncoder

    with pytest.raises(ValueError, match="architecture"):
        TimmImageEncoder("hf-hub:MahmoodLab/UNI", pretrained=False)


def test_local_weights_file_loads_into_the_architecture(tmp_path):
    """A hub-id backbone with a local weights file builds the named timm architecture from that file."""
    import timm

    from stgraph.models.image_encoders import TimmImageEncoder

    kwargs = {"init_values": 1e-5, "dynamic_img_size": True}
    source = timm.create_model("test_vit", pretrained=False, num_classes=0, **kwargs)
    torch.save(source.state_dict(), tmp_path / "pytorch_model.bin")
    enc = TimmImageEncoder("hf-hub:example/tiny-pathology-vit", weights=str(tmp_path / "pytorch_model.bin"),
                           architecture="test_vit", model_kwargs=kwargs, freeze="all").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(enc(x), source.eval()(x), atol=1e-6)
    last = TimmImageEncoder("test_vit", pretrained=False, freeze="all_but_last_stage", model_kwargs=kwargs)
    trainable = [n for n, p in last.model.named_parameters() if p.requires_grad]
    last_block = f"blocks.{len(last.model.blocks) - 1}."
    assert any(n.startswith(last_block) for n in trainable)
    assert all(n.startswith((last_block, "norm.", "fc_norm.")) for n in trainable), trainable


@pytest.mark.parametrize("name", ["foundation/uni.yaml", "foundation/stgchb_uni.yaml"])
def test_foundation_config_trains_with_a_random_tiny_vit(name, tiny_config, synthetic_slides, tmp_path):
    from stgraph.inference import predict_slide
    from stgraph.training import train_model

    config = tiny_config(name, "model.image_encoder.architecture=test_vit", "model.image_encoder.pretrained=false",
                         "model.image_encoder.backbone=hf-hub:example/tiny-pathology-vit",
                         "model.image_encoder.model_kwargs={init_values: 1.0e-5, dynamic_img_size: true}",
                         "model.ridge.n_components=16", "train.epochs=2")
    run = train_model(config, list(synthetic_slides[:2]), out=tmp_path / "run")
    pred = predict_slide(run, synthetic_slides[2])
    assert pred.X.shape == (synthetic_slides[2].n_obs, len(run.preprocessor.genes))
    assert np.isfinite(pred.X).all()
