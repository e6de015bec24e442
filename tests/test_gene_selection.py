"""The genes users look for: highly expressed genes kept beside the HVG union (train-only), and named markers
added by data.include_genes (a list or a file)."""
from __future__ import annotations

import re

import numpy as np
import pytest
from anndata import AnnData

from stgraph.config import ConfigError, load_config
from stgraph.data import pp
from stgraph.preprocess.prepare import fit_preprocessor
from tests.conftest import CONFIGS, HER2ST, require_shared


def _slide(means: dict[str, float], n: int = 60, seed: int = 0, sid: str = "s") -> AnnData:
    """Counts whose per-gene Poisson means are ``means`` (plus 200 noise genes so library sizes are stable)."""
    rng = np.random.default_rng(seed)
    names = list(means) + [f"bg{i}" for i in range(200)]
    lam = np.array(list(means.values()) + [5.0] * 200)
    ad = AnnData(rng.poisson(lam, size=(n, len(names))).astype(np.float32))
    ad.var_names = names
    ad.obs["slide_id"] = sid
    ad.obsm["spatial"] = rng.uniform(0, 100, size=(n, 2))
    return ad


def test_select_highly_expressed_pools_training_spots():
    a = _slide({"HIGH": 400.0, "MID": 60.0, "LOW": 1.0}, seed=1)
    b = _slide({"HIGH": 300.0, "MID": 80.0, "LOW": 1.0}, seed=2)
    top = pp.select_highly_expressed([a, b], n_top=2)
    assert set(top) == {"HIGH", "MID"}
    assert top == [g for g in a.var_names if g in top]  # the first slide's order


def test_config_keeps_expressed_genes_and_named_markers(tmp_path):
    """hvg_union alone drops the most expressed gene (Poisson, high mean); n_top_expressed keeps it and
    include_genes adds a low marker."""
    train = [_slide({"HIGH": 500.0, "MARKER": 0.5}, seed=s, sid=f"t{s}") for s in range(2)]
    base = ["data.n_top_hvg=20", "data.harmony=false", "model.spot_input=expression"]
    plain, _ = fit_preprocessor(load_config(CONFIGS / "bleep.yaml", base), train)
    assert "HIGH" not in plain.genes and "MARKER" not in plain.genes
    cfg = load_config(CONFIGS / "bleep.yaml", base + ["data.n_top_expressed=5", "data.include_genes=[MARKER]"])
    prep, expr = fit_preprocessor(cfg, train)
    assert "HIGH" in prep.genes and prep.genes[-1] == "MARKER"
    assert set(plain.genes) <= set(prep.genes) and expr["t0"].shape[1] == len(prep.genes)
    gene_file = tmp_path / "markers.txt"
    gene_file.write_text("# my markers\nMARKER\n")
    from_file, _ = fit_preprocessor(load_config(CONFIGS / "bleep.yaml", base + [f"data.include_genes={gene_file}"]),
                                    train)
    assert "MARKER" in from_file.genes


def test_a_marker_no_training_slide_measures_is_named():
    train = [_slide({"HIGH": 500.0, "ONLYHERE": 3.0}, seed=0, sid="t0"), _slide({"HIGH": 500.0}, seed=1, sid="t1")]
    cfg = load_config(CONFIGS / "bleep.yaml", ["data.n_top_hvg=20", "data.harmony=false",
                                               "data.include_genes=[HIGH, NOTAGENE, ONLYHERE]"])
    with pytest.warns(UserWarning) as caught:
        prep, _ = fit_preprocessor(cfg, train)
    text = " | ".join(str(w.message) for w in caught)
    assert re.search(r"data\.include_genes: 1 gene\(s\) measured by no training slide, skipped: NOTAGENE", text)
    assert re.search(r"only some training slides, skipped: ONLYHERE", text)
    assert "HIGH" in prep.genes and "NOTAGENE" not in prep.genes and "ONLYHERE" not in prep.genes


def test_include_genes_is_validated_at_load_time(tmp_path):
    with pytest.raises(ConfigError, match="data.include_genes"):
        load_config(CONFIGS / "stgraph.yaml", ["data.include_genes=5"])
    with pytest.raises(ConfigError, match="data.n_top_expressed"):
        load_config(CONFIGS / "stgraph.yaml", ["data.n_top_expressed=-1"])
    from stgraph.training.job import check_train_inputs

    cfg = load_config(CONFIGS / "stgraph.yaml", [f"data.include_genes={tmp_path / 'none.txt'}",
                                                 "model.image_encoder.pretrained=false"])
    with pytest.raises(FileNotFoundError, match=r"none\.txt \(data\.include_genes\)"):
        check_train_inputs(cfg, None)


@pytest.mark.slow
def test_shipped_stgraph_config_keeps_the_genes_biologists_plot():
    """On the five HER2+ training sections, the shipped stgraph.yaml predicts the README's demo genes and the
    usual breast-cancer markers (ERBB2 and ESR1 are in neither the HVG union nor the 785-gene list)."""
    require_shared(HER2ST)
    from stgraph.data.readers import read_her2st

    train = [read_her2st(HER2ST, s) for s in ["B4", "C2", "C3", "C4", "C5"]]
    prep, _ = fit_preprocessor(load_config(CONFIGS / "stgraph.yaml"), train)
    wanted = {"FASN", "IGKC", "COL3A1", "ERBB2", "ESR1", "KRT19", "EPCAM", "COL1A1"}
    assert wanted <= set(prep.genes), sorted(wanted - set(prep.genes))


def test_a_gene_list_file_is_used_exactly_as_given(tmp_path):
    """stgraph.yaml adds expressed genes and markers to its HVG selection, but `data.genes=FILE` (a published
    gene set every method is scored on) must stay exactly the file's genes."""
    train = [_slide({"HIGH": 500.0, "MARKER": 0.5}, seed=s, sid=f"t{s}") for s in range(2)]
    listed = [g for g in train[0].var_names if g not in ("HIGH", "MARKER")][:6]
    gene_file = tmp_path / "set.txt"
    gene_file.write_text("\n".join(listed) + "\n")
    cfg = load_config(CONFIGS / "stgraph.yaml", [f"data.genes={gene_file}", "data.n_top_expressed=5",
                                                 "data.include_genes=[MARKER]", "model.spot_input=expression"])
    prep, _ = fit_preprocessor(cfg, train)
    assert list(prep.genes) == listed
