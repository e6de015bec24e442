"""The configs ship inside the package: a name works from any folder (and an installed wheel), `stgraph configs`
lists them, and a file path keeps working."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from cli.main import main
from stgraph.config import load_config
from stgraph.config.shipped import find_config, list_configs, shipped_dir
from tests.conftest import CONFIGS, REPO, tiny_overrides


def test_name_works_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("stgraph").model.name == "ridge"
    cpu = load_config("cpu/bleep")  # `base: ../bleep.yaml` resolves inside the shipped folder
    assert cpu.name == "bleep_cpu" and cpu.model.image_encoder.backbone == "mobilenetv2_100"
    assert cpu.loss == load_config(CONFIGS / "bleep.yaml").loss
    # The README's repository-relative spelling works from elsewhere too.
    assert find_config("configs/cpu/bleep.yaml") == shipped_dir() / "cpu" / "bleep.yaml"


def test_a_file_path_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stgraph").write_text("base: " + str(CONFIGS / "stgraph.yaml") + "\nname: mine\n")
    assert load_config("stgraph").name == "mine"
    assert load_config(str(tmp_path / "stgraph")).name == "mine"


def test_unknown_name_lists_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no shipped config.*cpu/bleep"):
        load_config("stgrahp")


def test_configs_command_lists_names_with_descriptions(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["configs"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert {"stgraph", "cpu/bleep", "stgchb", "ablations/stgchb_no_hsic"} <= set(lines)
    assert "recommended method" in lines["stgraph"] and "BLEEP" in lines["bleep"]
    assert len(lines) == len(list(CONFIGS.rglob("*.yaml")))


def test_train_by_name_from_another_folder(tmp_path, monkeypatch, synthetic_slides, capsys):
    slides = []
    for ad in synthetic_slides[:2]:
        path = tmp_path / f"{ad.obs['slide_id'].iloc[0]}.h5ad"
        ad.write_h5ad(path)
        slides.append(str(path))
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    overrides = tiny_overrides(tmp_path / "cache", epochs=1) + ["data.harmony=false"]
    assert main(["train", "--config", "stgraph", "--data", *slides, "--out", "run", *overrides]) == 0
    assert (work / "run" / "config.yaml").is_file()


@pytest.mark.slow
def test_configs_are_in_the_wheel(tmp_path):
    """A wheel holds every shipped config; loaded from the unpacked wheel, a name resolves with its `base:`."""
    wheel_dir = tmp_path / "wheel"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheel_dir),
                            str(REPO)], capture_output=True, text=True, timeout=600)
    if build.returncode != 0:
        pytest.skip(f"could not build a wheel here: {build.stderr.strip().splitlines()[-1:]}")
    wheel = next(wheel_dir.glob("stgraph-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in CONFIGS.rglob("*.yaml"):
        assert f"stgraph/configs/{path.relative_to(CONFIGS).as_posix()}" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import stgraph.config.shipped as s, stgraph.config as c; print(s.shipped_dir()); "
            "print(c.load_config('cpu/bleep').name)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(site)}, timeout=300)
    assert out.returncode == 0, out.stderr
    where, name = out.stdout.split()
    assert where.startswith(str(site)) and name == "bleep_cpu"
