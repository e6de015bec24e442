import pytest

from stgraph.config import ConfigError, config_to_dict, load_config
from tests.conftest import CONFIGS, METHOD_CONFIGS


def test_published_configs_follow_the_papers():
    bleep = load_config(CONFIGS / "bleep.yaml")
    assert (bleep.model.image_encoder.backbone, bleep.model.embed_dim, bleep.loss.alignment) == ("resnet50", 256, "bleep")
    assert (bleep.inference.k, bleep.inference.reference, bleep.inference.aggregation) == (50, "spot", "mean")
    heclip = load_config(CONFIGS / "heclip.yaml")
    assert heclip.loss.alignment == "heclip" and heclip.inference.reference == "image"
    assert heclip.train.paired_augment and heclip.model.image_encoder.backbone == "resnet50"  # inherited
    mcl = load_config(CONFIGS / "mclstexp.yaml")
    assert (mcl.model.image_encoder.backbone, mcl.model.spot_encoder.name, mcl.loss.alignment) == (
        "densenet121", "transformer", "clip")
    assert (mcl.train.optimizer, mcl.train.lr, mcl.train.batch_size, mcl.inference.k) == ("adam", 1e-4, 128, 200)
    assert mcl.inference.aggregation == "inverse_square"
    st = load_config(CONFIGS / "stgchb.yaml")
    assert st.model.image_dgi.enabled and st.model.spot_dgi.enabled and st.model.hsic.enabled
    assert (st.model.hsic.beta, st.model.hsic.sigma, st.model.embed_dim) == (25.0, 10.0, 128)
    assert st.model.image_encoder.freeze == "all_but_last_stage" and st.model.spot_input == "pca"


@pytest.mark.parametrize("name,field,value", [
    ("ablations/stgchb_no_hsic.yaml", "hsic", False),
    ("ablations/stgchb_no_image_dgi.yaml", "image_dgi", False),
    ("ablations/stgchb_no_gene_dgi.yaml", "spot_dgi", False),
])
def test_ablation_files_switch_off_one_module(name, field, value):
    cfg = load_config(CONFIGS / name)
    assert getattr(cfg.model, field).enabled is value
    base = config_to_dict(load_config(CONFIGS / "stgchb.yaml"))
    diff = config_to_dict(cfg)
    base["model"][field]["enabled"] = value
    base["name"] = diff["name"]
    assert diff == base  # nothing else changed


def test_dotted_overrides_are_parsed_as_yaml():
    cfg = load_config(CONFIGS / "stgchb.yaml", ["model.hsic.enabled=false", "train.epochs=5",
                                                "data.graph.knn=null", "train.lr=3e-4"])
    assert cfg.model.hsic.enabled is False and cfg.train.epochs == 5
    assert cfg.data.graph.knn is None and cfg.train.lr == pytest.approx(3e-4)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown key.*hsicc.*valid keys.*hsic"):
        load_config(CONFIGS / "bleep.yaml", ["model.hsicc.enabled=false"])


def test_invalid_choice_lists_choices():
    import re

    from stgraph.losses import LOSSES

    expected = re.escape(str(LOSSES.names()))
    with pytest.raises(ConfigError, match=rf"loss.alignment.*'clipp'.*{expected}"):
        load_config(CONFIGS / "bleep.yaml", ["loss.alignment=clipp"])


def test_wrong_type_is_rejected():
    with pytest.raises(ConfigError, match="train.epochs: expected an integer"):
        load_config(CONFIGS / "bleep.yaml", ["train.epochs=many"])


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_cpu_configs_name_the_model_not_a_weights_path():
    cfg = load_config(CONFIGS / "cpu" / "bleep.yaml")
    assert cfg.model.image_encoder.backbone == "mobilenetv2_100"
    assert cfg.model.image_encoder.freeze == "all" and cfg.model.image_encoder.cache_features
    assert cfg.model.image_encoder.pretrained and cfg.model.image_encoder.weights is None


def test_every_config_file_loads():
    assert len(METHOD_CONFIGS) >= 12
    for name in METHOD_CONFIGS:
        load_config(CONFIGS / name)


def test_accumulate_needs_whole_jobs_and_a_positive_count():
    assert load_config(CONFIGS / "stgchb.yaml", ["train.accumulate=2"]).train.accumulate == 2
    assert load_config(CONFIGS / "mclstexp.yaml", ["train.accumulate=3"]).train.accumulate == 3
    with pytest.raises(ConfigError, match="train.accumulate must be ≥ 1"):
        load_config(CONFIGS / "stgchb.yaml", ["train.accumulate=0"])
    with pytest.raises(ConfigError, match="train.accumulate > 1 needs whole jobs"):
        load_config(CONFIGS / "bleep.yaml", ["train.accumulate=2"])


def test_reduced_rank_ridge_options_are_checked():
    config = load_config(CONFIGS / "stgraph.yaml", ["model.ridge.gene_rank_grid=[2,0]"])
    assert config.model.ridge.gene_rank_grid == [2, 0]
    with pytest.raises(ConfigError, match=r"model.ridge.gene_rank / gene_rank_grid must be ≥ 0"):
        load_config(CONFIGS / "stgraph.yaml", ["model.ridge.gene_rank=-1"])
    # spot_graph's base ridge is model.ridge: the same checks, the same section
    with pytest.raises(ConfigError, match=r"model.ridge.alpha / alpha_grid must be penalties > 0"):
        load_config(CONFIGS / "stgraph_graph.yaml", ["model.ridge.alpha_grid=[0,1]"])


def test_spot_graph_base_ridge_is_model_ridge_and_earlier_keys_move_there():
    graph = load_config(CONFIGS / "stgraph_graph.yaml")
    assert graph.model.ridge == load_config(CONFIGS / "stgraph.yaml").model.ridge  # inherited, not repeated
    assert not hasattr(graph.model.spot_graph, "alpha")
    # a run saved when spot_graph repeated the ridge's keys: they set its base ridge, over model.ridge's
    with pytest.warns(DeprecationWarning, match="write them under model.ridge"):
        old = load_config(CONFIGS / "stgraph_graph.yaml", ["model.spot_graph.alpha=123", "model.spot_graph.gene_rank=3"])
    assert (old.model.ridge.alpha, old.model.ridge.gene_rank) == (123, 3)
    # another kind never read them: dropped
    assert load_config(CONFIGS / "stgraph.yaml", ["model.spot_graph.alpha=123"]).model.ridge.alpha == 1e4
    # closed choices are checked literals
    for key, bad in (("base", "ridg"), ("neighbours", "atention")):
        with pytest.raises(ConfigError, match=f"model.spot_graph.{key}: '{bad}' is not one of"):
            load_config(CONFIGS / "stgraph_graph.yaml", [f"model.spot_graph.{key}={bad}"])


def test_a_user_config_can_base_itself_on_a_shipped_config_by_name(tmp_path):
    (tmp_path / "mine.yaml").write_text("base: cpu/stgchb\ntrain:\n  epochs: 7\n")
    cfg = load_config(tmp_path / "mine.yaml")
    assert cfg.train.epochs == 7 and cfg.model.spot_dgi.enabled  # the shipped ST-GCHB config underneath
    (tmp_path / "stgraph.yaml").write_text("name: beside\nmodel:\n  kind: ridge\n  image_encoder:\n    freeze: all\n"
                                           "    cache_features: true\ninference:\n  reference: image\n")
    (tmp_path / "other.yaml").write_text("base: stgraph.yaml\n")
    assert load_config(tmp_path / "other.yaml").name == "beside"  # a file beside the config wins
