"""The top-level API (``stgraph.read_slide``, ``stgraph.train``, ``stgraph.pl``, ...): every name resolves to
the object at its home, ``dir`` lists them, and ``import stgraph`` alone imports no heavy dependency."""
import subprocess
import sys
from pathlib import Path

import pytest

import stgraph

REPO = Path(__file__).resolve().parents[1]

HOMES = {
    "read_slide": "stgraph.data.readers:read_slide",
    "read_her2st": "stgraph.data.readers:read_her2st",
    "SlideCollection": "stgraph.data:SlideCollection",
    "load_config": "stgraph.config:load_config",
    "train": "stgraph.training:train_model",
    "load_run": "stgraph.inference:load_run",
    "predict": "stgraph.inference:predict_slide",
    "predict_wsi": "stgraph.inference.wsi:predict_wsi",
    "write_prediction": "stgraph.inference:write_prediction",
    "write_spatialdata": "stgraph.inference.spatialdata_out:write_spatialdata",
    "extend_reference": "stgraph.inference:extend_reference",
    "make_folds": "stgraph.evaluation:make_folds",
    "evaluate": "stgraph.evaluation:cross_validate",
    "pp": "stgraph.data.pp",
    "pl": "stgraph.pl",
    "metrics": "stgraph.metrics",
}


@pytest.mark.parametrize("name", sorted(HOMES))
def test_every_top_level_name_is_the_object_at_its_home(name):
    import importlib

    module, _, attr = HOMES[name].partition(":")
    home = importlib.import_module(module)
    assert getattr(stgraph, name) is (getattr(home, attr) if attr else home)


def test_all_and_dir_list_the_api():
    assert set(HOMES) | {"__version__"} == set(stgraph.__all__)
    assert set(HOMES) <= set(dir(stgraph))


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        stgraph.trian  # noqa: B018
    assert not hasattr(stgraph, "read_h5")


def test_import_stgraph_is_light_and_names_load_on_first_use():
    code = ("import sys, stgraph; heavy = {'torch', 'anndata', 'scanpy', 'matplotlib'}; "
            "print(sorted(heavy & set(sys.modules))); stgraph.read_slide; print('anndata' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    eager, loaded = out.stdout.split("\n")[:2]
    assert eager == "[]" and loaded == "True"
