"""A newcomer's extension: a toy loss and a toy spot encoder, each with settings of its own, registered here,
in this test module alone, and used from a YAML config (no other file edited); settings checked at load."""
from __future__ import annotations

import pytest
import torch
import yaml
from torch import nn

from stgraph.losses import LOSSES, register_loss
from stgraph.models import SPOT_ENCODERS, ModelSpec, STModel
from tests.conftest import CONFIGS, tiny_overrides


class ToyL2Loss(nn.Module):
    """Hinged squared distance between paired embeddings, ``mean(max(0, ‖I − S‖² − margin)) / T``."""

    def __init__(self, temperature: float = 1.0, margin: float = 0.0):
        super().__init__()
        self.temperature, self.margin = temperature, margin

    def forward(self, image_emb: torch.Tensor, spot_emb: torch.Tensor) -> torch.Tensor:
        return ((image_emb - spot_emb).pow(2).sum(1) - self.margin).clamp_min(0).mean() / self.temperature


class ToyLinearEncoder(nn.Module):
    """``layers`` linear maps to ``width`` dimensions (GELU between)."""

    def __init__(self, in_dim: int, width: int = 12, layers: int = 1):
        super().__init__()
        dims = [in_dim] + [width] * layers
        blocks = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            blocks += [nn.Linear(a, b)] + ([nn.GELU()] if i < layers - 1 else [])
        self.net = nn.Sequential(*blocks)
        self.out_dim = width

    def forward(self, x, coords=None):
        return self.net(x)


@pytest.fixture
def registered():
    register_loss("toy_l2")(ToyL2Loss)
    SPOT_ENCODERS.register("toy_linear", ToyLinearEncoder)
    yield
    LOSSES.unregister("toy_l2")
    SPOT_ENCODERS.unregister("toy_linear")


def _toy_yaml(tmp_path, encoder_options: dict, loss_options: dict):
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump({
        "name": "toy",
        "model": {"spot_encoder": {"name": "toy_linear", "options": encoder_options}},
        "loss": {"alignment": "toy_l2", "options": loss_options}}))
    return path


def test_toy_loss_and_encoder_train_from_yaml_with_their_options(registered, synthetic_slides, tmp_path):
    from stgraph.config import load_config
    from stgraph.inference import load_run, predict_slide
    from stgraph.training import train_model

    path = _toy_yaml(tmp_path, {"width": 7, "layers": 2}, {"margin": 0.5})
    cfg = load_config(path, tiny_overrides(tmp_path / "cache") + ["data.genes=shared", "model.spot_input=expression"])
    slides = list(synthetic_slides)
    run = train_model(cfg, slides[:2], out=tmp_path / "run")
    enc = run.model.spot_encoder
    # The options reached the encoder: 7 wide (not the default 12), two linear layers (not one).
    assert isinstance(enc, ToyLinearEncoder) and enc.out_dim == 7
    assert sum(isinstance(m, nn.Linear) for m in enc.modules()) == 2
    assert "align" in run.result.history.columns
    loaded = load_run(tmp_path / "run")
    assert loaded.config.model.spot_encoder.options == {"width": 7, "layers": 2}
    assert loaded.model.spot_encoder.out_dim == 7
    pred = predict_slide(loaded, slides[2])
    assert pred.shape == (slides[2].n_obs, len(run.genes))


def test_loss_options_reach_the_loss(registered, tmp_path):
    from stgraph.config import load_config
    from stgraph.losses import Objective

    obj = Objective.from_config(load_config(_toy_yaml(tmp_path, {}, {"margin": 3.0}), ["loss.temperature=2.0"]))
    assert (obj.alignment.margin, obj.alignment.temperature) == (3.0, 2.0)
    i, s = torch.zeros(2, 4), torch.tensor([[2.0, 0, 0, 0], [1.0, 0, 0, 0]])
    # hand value: squared distances 4 and 1, minus margin 3 → 1 and 0, mean 0.5, / T=2 → 0.25
    assert obj.alignment(i, s).item() == pytest.approx(0.25)


def test_bleep_detach_targets_is_settable_from_yaml():
    from stgraph.config import load_config
    from stgraph.losses import Objective

    attached = Objective.from_config(load_config(CONFIGS / "bleep.yaml")).alignment
    detached = Objective.from_config(load_config(CONFIGS / "bleep.yaml", ["loss.options.detach_targets=true"])).alignment
    assert (attached.detach_targets, detached.detach_targets) == (False, True)
    torch.manual_seed(0)
    grads = []
    for loss in (attached, detached):
        i = torch.randn(6, 4, requires_grad=True)
        s = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
        loss(i, s).backward()
        grads.append(i.grad)
    assert not torch.allclose(grads[0], grads[1])  # targets differentiated through vs constants


@pytest.mark.parametrize("override, words", [
    ("model.spot_encoder.options={widht: 3}", ["toy_linear", "widht", "width", "layers"]),
    ("loss.options={margni: 1}", ["toy_l2", "margni", "margin"]),
    ("loss.options={temperature: 1}", ["toy_l2", "temperature", "set by stgraph"]),
])
def test_a_wrong_option_is_a_one_line_error_naming_the_component(registered, tmp_path, override, words):
    from stgraph.config import ConfigError, load_config

    with pytest.raises(ConfigError) as err:
        load_config(_toy_yaml(tmp_path, {}, {}), [override])
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


@pytest.mark.parametrize("override, words", [
    ("model.spot_encoder.options={hidden_dim: [4]}", ["mlp", "hidden_dims"]),
    ("inference.backend_options={nprob: 4}", ["auto", "nprobe"]),
    ("inference.aggregation_options={temperature: 0.5}", ["mean", "none"]),
    ("inference.similarity_options={p: 3}", ["cosine", "p"]),
    ("model.hsic.branches=[spot, imgae]", ["branches[1]", "imgae", "image"]),
    ("model.kind=rigde", ["model.kind", "contrastive", "ridge"]),
    ("train.precision=16", ["train.precision", "bf16"]),
])
def test_built_in_components_refuse_wrong_options_and_items(override, words):
    from stgraph.config import ConfigError, load_config

    extra = ["model.spot_encoder.name=mlp"] if "hidden_dim" in override else []
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "bleep.yaml", extra + [override])
    assert all(w in str(err.value) for w in words), str(err.value)


def test_required_option_missing_is_named():
    from stgraph.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"'mlp' needs option\(s\) \['hidden_dims'\]"):
        load_config(CONFIGS / "bleep.yaml", ["model.spot_encoder.name=mlp"])


def test_flat_spot_encoder_keys_of_earlier_configs_still_load():
    from stgraph.config import load_config

    cfg = load_config(CONFIGS / "bleep.yaml", ["model.spot_encoder.name=transformer", "model.spot_encoder.heads=2",
                                               "model.spot_encoder.dim_head=8"])
    assert cfg.model.spot_encoder.options == {"heads": 2, "dim_head": 8}
    # a flat key typed as an override beats the same option in the file (mclstexp.yaml has options.heads: 8)
    mcl = load_config(CONFIGS / "mclstexp.yaml", ["model.spot_encoder.heads=2"]).model.spot_encoder.options
    assert (mcl["heads"], mcl["dim_head"]) == (2, 64)
    # an encoder that never used them: dropped, as they were always ignored
    assert load_config(CONFIGS / "bleep.yaml", ["model.spot_encoder.heads=2"]).model.spot_encoder.options == {}


def test_unknown_names_fail_with_the_valid_choices(tmp_path):
    from stgraph.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="valid|not one of"):
        load_config(CONFIGS / "bleep.yaml", ["model.spot_encoder.name=toy_linear"])


class ToyMeanRegressor(STModel):
    """A plugin regressor: each gene is the training mean plus a least-squares map of the first cached
    feature (a model kind in one class, one decorator, declaring what it does)."""

    spec = ModelSpec(training="fit", output="expression", cached_features=True, seeded=False,
                     reference=("image",), ignores=("train.lr",), ignores_why="the toy is fitted in closed form")

    def __init__(self, image_encoder, shrink: float = 0.0):
        super().__init__()
        self.image_encoder, self.shrink = image_encoder, shrink
        self.register_buffer("coef", torch.empty(0))
        self.register_buffer("mean", torch.empty(0))
        self.register_buffer("x_mean", torch.empty(0))

    @classmethod
    def from_config(cls, config, spot_in_dim, image_encoder, shrink: float = 0.0):
        return cls(image_encoder, shrink)

    def fit(self, slides):
        import numpy as np

        x = np.concatenate([s.features[:, :1] for s in slides]).astype(float)
        y = np.concatenate([s.expr for s in slides]).astype(float)
        xc, yc = x - x.mean(0), y - y.mean(0)
        coef = (xc * yc).sum(0) / max(float((xc ** 2).sum()), 1e-12) * (1 - self.shrink)
        self.coef, self.mean, self.x_mean = (torch.as_tensor(a, dtype=torch.float32) for a in (coef, y.mean(0), x.mean(0)))
        return self

    def encode_image(self, batch):
        return type("Emb", (), {"emb": batch["features"][:, :1]})

    def predict_prepared(self, slide):
        x = torch.as_tensor(slide.features[:, :1]) - self.x_mean
        return (self.mean + x * self.coef).numpy()


def test_a_plugin_model_kind_declares_what_it_does_and_every_layer_follows(tmp_path, synthetic_slides):
    import warnings

    from stgraph.config import ConfigError, load_config
    from stgraph.config.load import IgnoredOptionWarning
    from stgraph.inference import load_run, predict_slide
    from stgraph.models import MODELS, STModel, model_spec
    from stgraph.training import train_model

    MODELS.register("toy_mean", ToyMeanRegressor)
    try:
        over = tiny_overrides(tmp_path / "cache") + ["model.kind=toy_mean", "model.image_encoder.freeze=all",
                                                     "model.image_encoder.cache_features=true",
                                                     "inference.reference=image", "train.batch_size=1"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", IgnoredOptionWarning)
            cfg = load_config(CONFIGS / "bleep.yaml", over)  # batch_size 1: its spec's least batch is 1
        assert model_spec(cfg).output == "expression" and cfg.train.batch_size == 1
        # what it declares is checked at load time: cached features, its reference branch
        with pytest.raises(ConfigError, match="model.kind=toy_mean fits on cached backbone features"):
            load_config(CONFIGS / "bleep.yaml", over + ["model.image_encoder.cache_features=false",
                                                        "model.image_encoder.freeze=none"])
        with pytest.raises(ConfigError, match="stores image embeddings.*inference.reference=image"):
            load_config(CONFIGS / "bleep.yaml", over + ["inference.reference=spot"])
        # an option it ignores is warned about with its reason, naming the value
        with pytest.warns(IgnoredOptionWarning, match=r"toy_mean ignores train.lr=0.5.*fitted in closed form"):
            load_config(CONFIGS / "bleep.yaml", over + ["train.lr=0.5"])
        # trained by its own fit (no Trainer epochs), predicted by the model itself (no kNN in the record)
        run = train_model(cfg, synthetic_slides[:2], out=tmp_path / "run")
        assert run.result.best_epoch is None
        pred = predict_slide(load_run(tmp_path / "run"), synthetic_slides[2])
        record = pred.uns["stgraph"]
        assert "predicted by the model (model.kind toy_mean)" in record["values"] and "k" not in record
        truth = synthetic_slides[2]
        assert pred.shape == (truth.n_obs, len(run.genes))
        from stgraph.inference.predict import PredictionOptionError
        with pytest.raises(PredictionOptionError, match="--k: the run's model .*retrieves nothing"):
            predict_slide(load_run(tmp_path / "run"), truth, k=5)
    finally:
        MODELS.unregister("toy_mean")
    # the registry refuses a kind that does not say what it does, or lacks what its spec implies
    class NoSpec(nn.Module):
        pass

    with pytest.raises(TypeError, match="declares no `spec = ModelSpec"):
        MODELS.register("no_spec", NoSpec)
    with pytest.raises(TypeError, match="not a builder function"):
        MODELS.register("a_function", lambda config, spot_in_dim, image_encoder: None)

    class NoPredict(STModel):
        spec = ModelSpec(training="fit", output="expression", reference=("image",))

        @classmethod
        def from_config(cls, config, spot_in_dim, image_encoder):
            return cls()

        def fit(self, slides):
            return self

        def encode_image(self, batch):
            return batch

    with pytest.raises(TypeError, match=r"needs method\(s\) \['predict_prepared'\]"):
        MODELS.register("no_predict", NoPredict)
    with pytest.raises(ValueError, match="the Trainer trains the two-branch joint space"):
        ModelSpec(training="trainer", output="expression")
    assert "no_spec" not in MODELS and "no_predict" not in MODELS
    # `name` is a free label; a config that says `name: ridge` (no kind) still means the ridge model
    assert load_config(CONFIGS / "bleep.yaml", ["model.name=Ridge"]).model.kind == "contrastive"
    legacy = {k: v for k, v in yaml.safe_load((CONFIGS / "stgraph.yaml").read_text())["model"].items() if k != "kind"}
    from stgraph.config import config_from_dict

    raw = yaml.safe_load((CONFIGS / "stgraph.yaml").read_text())
    raw["model"] = legacy
    assert legacy["name"] == "ridge" and config_from_dict(raw).model.kind == "ridge"


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


def test_image_encoder_options_reach_the_builder():
    from stgraph.config import ConfigError, load_config
    from stgraph.models import IMAGE_ENCODERS, create_image_encoder

    class ToyImageEncoder(nn.Module):
        """Mean colour per channel, repeated ``repeats`` times."""

        def __init__(self, backbone, pretrained, weights, freeze, architecture, model_kwargs, input_size,
                     repeats: int = 2):
            super().__init__()
            self.repeats, self.num_features = repeats, 3 * repeats

        def forward(self, patches):
            return patches.mean((2, 3)).repeat(1, self.repeats)

    IMAGE_ENCODERS.register("toy_image", ToyImageEncoder)
    try:
        cfg = load_config(CONFIGS / "bleep.yaml", ["model.image_encoder.name=toy_image",
                                                   "model.image_encoder.options={repeats: 4}"])
        enc = create_image_encoder(cfg)
        assert enc.num_features == 12 and enc(torch.ones(2, 3, 8, 8)).shape == (2, 12)
        with pytest.raises(ConfigError, match="'toy_image' has no option.*\\['repaets'\\].*\\['repeats'\\]"):
            load_config(CONFIGS / "bleep.yaml", ["model.image_encoder.name=toy_image",
                                                 "model.image_encoder.options={repaets: 4}"])
    finally:
        IMAGE_ENCODERS.unregister("toy_image")
    # timm's entry passes its options on to timm.create_model, as timm does with **kwargs
    timm_cfg = load_config(CONFIGS / "bleep.yaml", ["model.image_encoder.backbone=test_resnet",
                                                    "model.image_encoder.pretrained=false",
                                                    "model.image_encoder.options={drop_rate: 0.25}"])
    assert create_image_encoder(timm_cfg).model.drop_rate == 0.25
