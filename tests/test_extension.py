"""A newcomer's extension: a toy loss and a toy spot encoder registered here, in this test module alone, and
used from a YAML config (no other file edited)."""
from __future__ import annotations

import pytest
import torch
import yaml
from torch import nn

from stgraph.losses import LOSSES, register_loss
from stgraph.models import SPOT_ENCODERS
from tests.conftest import CONFIGS, tiny_overrides


class ToyL2Loss(nn.Module):
    """Mean squared distance between paired embeddings (no negatives)."""

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        self.temperature = temperature

    def forward(self, image_emb: torch.Tensor, spot_emb: torch.Tensor) -> torch.Tensor:
        return (image_emb - spot_emb).pow(2).sum(1).mean() / self.temperature


class ToyLinearEncoder(nn.Module):
    """``h = W x`` to 12 dimensions."""

    def __init__(self, in_dim: int, cfg):
        super().__init__()
        self.linear = nn.Linear(in_dim, 12)
        self.out_dim = 12

    def forward(self, x, coords=None):
        return self.linear(x)


@pytest.fixture
def registered():
    register_loss("toy_l2")(ToyL2Loss)
    SPOT_ENCODERS.register("toy_linear", ToyLinearEncoder)
    yield
    LOSSES.unregister("toy_l2")
    SPOT_ENCODERS.unregister("toy_linear")


def test_toy_loss_and_encoder_train_from_yaml(registered, synthetic_slides, tmp_path):
    from stgraph.config import load_config
    from stgraph.inference import load_run, predict_slide
    from stgraph.training import train_model

    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump({"name": "toy", "model": {"spot_encoder": {"name": "toy_linear"}},
                                    "loss": {"alignment": "toy_l2"}}))
    cfg = load_config(path, tiny_overrides(tmp_path / "cache") + ["data.genes=shared", "model.spot_input=expression"])
    slides = list(synthetic_slides)
    run = train_model(cfg, slides[:2], out=tmp_path / "run")
    assert isinstance(run.model.spot_encoder, ToyLinearEncoder)
    assert "align" in run.result.history.columns
    pred = predict_slide(load_run(tmp_path / "run"), slides[2])
    assert pred.shape == (slides[2].n_obs, len(run.genes))


def test_unknown_names_fail_with_the_valid_choices(tmp_path):
    from stgraph.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="valid|not one of"):
        load_config(CONFIGS / "bleep.yaml", ["model.spot_encoder.name=toy_linear"])


def test_toy_metric_is_a_report_column():
    import numpy as np

    from stgraph.metrics import METRICS, evaluate_arrays

    METRICS.register("toy_max_abs", lambda pred, true, ctx: {"toy_max_abs": float(np.abs(pred - true).max())})
    try:
        rng = np.random.default_rng(0)
        scores = evaluate_arrays(rng.random((20, 4)), rng.random((20, 4)), list("abcd"))
        assert 0 < scores["toy_max_abs"] < 1 and "pcc_acg" in scores
    finally:
        METRICS.unregister("toy_max_abs")


def test_cli_prints_one_line_for_a_stgraph_error(tmp_path, capsys):
    from stgraph.cli.main import main

    code = main(["train", "--config", str(CONFIGS / "bleep.yaml"), "--data", str(tmp_path), "--out",
                 str(tmp_path / "run"), "loss.alignment=nope"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and "\n" not in err and "not one of" in err
