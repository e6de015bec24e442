"""The external variant in examples/plugin_variant/ (package stgraph_gatv2), loaded as a user would: from the
command line with --plugin, from its entry point, listed by `stgraph components`; its components against
hand-computed values."""
from __future__ import annotations

import json
import sys

import anndata
import numpy as np
import pytest
import torch

from tests.conftest import REPO, tiny_overrides

EXAMPLE = REPO / "examples" / "plugin_variant"
VARIANT_CONFIGS = EXAMPLE / "configs"
PLUGIN_ENTRIES = (("stgraph.models.spot_encoders", "SPOT_ENCODERS", "gatv2"),
                  ("stgraph.losses", "LOSSES", "margin"),
                  ("stgraph.retrieval.impute", "AGGREGATIONS", "gaussian_kernel"))


@pytest.fixture
def variant(monkeypatch):
    """The example folder on sys.path (as PYTHONPATH would put it); afterwards the plugin is forgotten, so
    the registries of later tests hold only their own entries."""
    import importlib

    from stgraph import plugins

    pytest.importorskip("torch_geometric")
    monkeypatch.syspath_prepend(str(EXAMPLE))
    yield
    for module, attr, name in PLUGIN_ENTRIES:
        registry = getattr(importlib.import_module(module), attr)
        if name in registry:
            registry.unregister(name)
    for mod in [m for m in sys.modules if m == "stgraph_gatv2" or m.startswith("stgraph_gatv2.")]:
        del sys.modules[mod]
    for key in [k for k in plugins._loaded if k.startswith("stgraph_gatv2")]:
        del plugins._loaded[key]


def _quiet_figures(monkeypatch):
    """The figures (loss curves, the evaluation's gene maps) take most of the time and are not checked here."""
    monkeypatch.setattr("stgraph.pl.spatial.plot_genes", lambda *a, **k: None)
    monkeypatch.setattr("stgraph.pl.benchmark.plot_fold_pcc", lambda *a, **k: None)
    monkeypatch.setattr("stgraph.training.job._plot_losses", lambda *a, **k: None)


def _tiny(tmp_path) -> list[str]:
    # tiny_overrides shrinks the transformer encoder with flat keys (model.spot_encoder.heads=2), which would
    # set the GATv2 heads too: the variant keeps its own.
    return [o for o in tiny_overrides(tmp_path / "cache", epochs=1) if not o.startswith("model.spot_encoder.")]


def test_the_variant_trains_and_predicts_from_the_command_line(variant, slide_files, tmp_path, monkeypatch):
    from stgraph.cli.main import main
    from stgraph.inference import load_run

    _quiet_figures(monkeypatch)
    run = tmp_path / "run"
    assert main(["--plugin", "stgraph_gatv2", "train", "--config", str(VARIANT_CONFIGS / "gatv2.yaml"),
                 "--data", *slide_files[:2], "--out", str(run), *_tiny(tmp_path),
                 "model.spot_encoder.options.heads=1", "model.spot_encoder.options.dropout=0.2"]) == 0
    trained = load_run(run)
    enc = trained.model.spot_encoder
    # The settings reached the encoder: one attention head (the config says 2), dropout 0.2 (it says 0.1).
    assert type(enc).__module__ == "stgraph_gatv2.encoder" and (enc.heads, enc.conv.dropout) == (1, 0.2)
    assert enc.conv.att.shape[1] == 1 and enc.out_dim == 32
    assert trained.config.loss.alignment == "margin" and trained.config.plugins == ["stgraph_gatv2"]

    pred = tmp_path / "pred.h5ad"
    assert main(["--plugin", "stgraph_gatv2", "predict", "--model", str(run), "--slide", slide_files[2],
                 "--out", str(pred)]) == 0
    out = anndata.read_h5ad(pred)
    assert out.uns["stgraph"]["aggregation"] == "gaussian_kernel" and np.isfinite(out.X).all()
    assert out.n_obs == anndata.read_h5ad(slide_files[2]).n_obs


def test_the_variant_and_its_ablation_evaluate_from_the_command_line(variant, slide_files, tmp_path, monkeypatch):
    """The ablation from the shell: the variant and its one-head ablation on one leave-one-slide-out fold
    (two tiny trainings: 1.7 s on a quiet 2-core machine once torch-geometric is imported)."""
    from stgraph.cli.main import main
    from stgraph.inference import load_run

    _quiet_figures(monkeypatch)
    evald = tmp_path / "eval"
    assert main(["--plugin", "stgraph_gatv2", "evaluate", "--config", str(VARIANT_CONFIGS / "gatv2.yaml"),
                 str(VARIANT_CONFIGS / "gatv2_one_head.yaml"), "--data", *slide_files, "--out", str(evald),
                 "--no-baselines", "--only-folds", "slide2", "--keep-runs", *_tiny(tmp_path)]) == 0
    results = (evald / "results.csv").read_text()
    assert "gatv2_one_head" in results and "gatv2," in results
    runs = {name: load_run(next(evald.glob(f"runs/*/{name}"))) for name in ("gatv2", "gatv2_one_head")}
    # The setting changed the model: one attention vector per head, and different reference embeddings.
    assert [runs[n].model.spot_encoder.conv.att.shape[1] for n in ("gatv2_one_head", "gatv2")] == [1, 2]
    emb = [runs[n].reference.embeddings for n in ("gatv2_one_head", "gatv2")]
    assert emb[0].shape == emb[1].shape and not np.allclose(emb[0], emb[1])


def test_components_lists_the_plugin_with_its_options(variant, capsys):
    from stgraph.cli.main import main

    assert main(["--plugin", "stgraph_gatv2", "components", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    rows = {reg: {r["name"]: r for r in table[reg]["entries"]}
            for reg in ("spot_encoders", "losses", "aggregations", "similarities")}
    gat = rows["spot_encoders"]["gatv2"]
    assert gat["options"] == {"hidden_dim": 32, "heads": 2, "dropout": 0.0}
    assert gat["module"] == "stgraph_gatv2.encoder" and gat["summary"].startswith("GATv2 attention")
    assert rows["losses"]["margin"]["options"] == {"margin": 0.2}
    assert rows["aggregations"]["gaussian_kernel"]["options"] == {"bandwidth": None}
    # built-ins list their options too (from their signatures)
    assert rows["spot_encoders"]["transformer"]["options"]["heads"] == 8
    assert rows["losses"]["bleep"]["options"] == {"detach_targets": False}
    assert {"cosine", "dot", "l2"} <= set(rows["similarities"])


def test_the_installed_entry_point_is_loaded_without_flags(variant, tmp_path, monkeypatch):
    """What `pip install examples/plugin_variant` leaves behind: a dist-info with the entry point."""
    from stgraph import plugins
    from stgraph.components import list_components

    dist = tmp_path / "site" / "stgraph_gatv2-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: stgraph-gatv2\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[stgraph.plugins]\ngatv2 = stgraph_gatv2\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(plugins, "_entry_points_done", False)
    table = list_components()
    assert "gatv2" in {r["name"] for r in table["spot_encoders"]["entries"]}
    assert plugins.loaded_plugins()["stgraph_gatv2"].startswith("entry point 'gatv2'")


def test_a_plugin_that_fails_to_import_is_one_line(tmp_path, capsys, monkeypatch):
    from stgraph.cli.main import main

    (tmp_path / "broken_plugin_mod.py").write_text("import numpy\nraise RuntimeError('boom\\nsecond line')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for module, word in (("no_such_plugin_mod", "ModuleNotFoundError"), ("broken_plugin_mod", "RuntimeError: boom")):
        assert main(["--plugin", module, "components"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err and f"plugin {module!r}" in err and word in err


def test_margin_loss_by_hand(variant):
    from stgraph_gatv2.loss import MarginRankingLoss

    i = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    s = torch.tensor([[2.0, 0.0], [1.0, 0.0]])  # normalised: both [1, 0]
    # C = S Iᵀ = [[1, 0], [1, 0]], diagonal [1, 0], m = 0.5:
    # spot→image off-diagonal hinges: max(0, .5−1+0)=0, max(0, .5−0+1)=1.5 → mean 0.75
    # image→spot off-diagonal hinges: max(0, .5−0+0)=.5 (column 1, row 0), max(0, .5−1+1)=.5 → mean 0.5
    assert MarginRankingLoss(margin=0.5)(i, s).item() == pytest.approx(0.5 * (0.75 + 0.5))
    assert MarginRankingLoss(margin=0.0)(i, i).item() == pytest.approx(0.0)  # perfect pairs, no margin


def test_gaussian_kernel_by_hand(variant):
    from stgraph_gatv2.aggregation import gaussian_kernel

    d = np.array([[1.0, 2.0]])
    fixed = gaussian_kernel(np.zeros((1, 2)), d, bandwidth=1.0)  # exp(−1/2), exp(−2)
    assert fixed[0, 0] == pytest.approx(1 / (1 + np.exp(-1.5)))
    adaptive = gaussian_kernel(np.zeros((1, 2)), d)  # h = median = 1.5: exp(−1/4.5), exp(−4/4.5)
    assert adaptive[0, 0] == pytest.approx(1 / (1 + np.exp(-3 / 4.5)))


def test_gatv2_encoder_reads_the_graph(variant):
    from stgraph_gatv2.encoder import GATv2SpotEncoder

    torch.manual_seed(0)
    enc = GATv2SpotEncoder(6, hidden_dim=4, heads=3).eval()
    x = torch.randn(5, 6)
    chain = torch.tensor([[0, 1, 1, 2, 2, 3, 3, 4], [1, 0, 2, 1, 3, 2, 4, 3]])
    out = enc(x, None, edge_index=chain)
    assert out.shape == (5, 12)
    assert not torch.allclose(out, enc(x, None, edge_index=chain[:, :2]))
