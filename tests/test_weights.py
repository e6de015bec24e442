"""Pretrained weights are found the way timm finds them: the config's file, $STGRAPH_WEIGHTS, the hub cache,
then the hub; a machine with none of them fails at once, naming the key and every place looked."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from stgraph.models import TimmImageEncoder
from stgraph.models.weights import WeightsNotFoundError, resolve_weights
from tests.conftest import CONFIGS, MOBILENET, REPO, require_shared


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """No weights anywhere: no folder, an empty hub cache, the hub offline."""
    monkeypatch.delenv("STGRAPH_WEIGHTS", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path


def _reference_state(seed: int) -> dict:
    torch.manual_seed(seed)
    return TimmImageEncoder("test_resnet", pretrained=False).model.state_dict()


def _same(enc: TimmImageEncoder, state: dict) -> bool:
    got = enc.model.state_dict()
    return all(torch.equal(got[k], v) for k, v in state.items() if k in got)


def test_shipped_configs_name_no_machine_path():
    for path in CONFIGS.rglob("*.yaml"):
        raw = yaml.safe_load(path.read_text()) or {}
        weights = ((raw.get("model") or {}).get("image_encoder") or {}).get("weights")
        assert weights is None, f"{path} names a weights file: {weights}"


def test_weights_folder_env_finds_file_named_after_model(nowhere, monkeypatch):
    folder = nowhere / "weights"
    folder.mkdir()
    state = _reference_state(1)
    torch.save(state, folder / "test_resnet.r160_in1k.pth")
    torch.save(_reference_state(2), folder / "test_resnetd.pth")  # another model: never matched
    monkeypatch.setenv("STGRAPH_WEIGHTS", str(folder))
    source = resolve_weights("test_resnet")
    assert source.file == folder / "test_resnet.r160_in1k.pth" and source.origin == "$STGRAPH_WEIGHTS"
    enc = TimmImageEncoder("test_resnet", pretrained=True)
    assert _same(enc, state) and enc.weights_source.label == "test_resnet.r160_in1k"


def test_config_file_comes_before_the_folder(nowhere, monkeypatch):
    folder = nowhere / "weights"
    folder.mkdir()
    torch.save(_reference_state(1), folder / "test_resnet.pth")
    mine = nowhere / "mine.pth"
    state = _reference_state(3)
    torch.save(state, mine)
    monkeypatch.setenv("STGRAPH_WEIGHTS", str(folder))
    assert _same(TimmImageEncoder("test_resnet", pretrained=True, weights=str(mine)), state)


def test_hub_cache_is_used_offline(nowhere):
    """A file timm downloaded earlier (Hugging Face hub cache layout) is found with HF_HUB_OFFLINE=1."""
    from safetensors.torch import save_file

    snap = nowhere / "hf_empty" / "models--timm--test_resnet.r160_in1k" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("abc123")
    state = {k: v.contiguous() for k, v in _reference_state(4).items()}
    save_file(state, str(snap / "model.safetensors"))
    source = resolve_weights("test_resnet")
    assert source.origin == "hub cache" and source.file == snap / "model.safetensors"
    assert _same(TimmImageEncoder("test_resnet", pretrained=True), state)


def test_nowhere_names_key_and_every_place(nowhere):
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as err:
        TimmImageEncoder("test_resnet", pretrained=True)
    msg = str(err.value)
    assert time.perf_counter() - start < 5
    assert msg.startswith("model.image_encoder.weights:")
    for place in ("STGRAPH_WEIGHTS", "hub cache", "HF_HUB_OFFLINE", "test_resnet"):
        assert place in msg
    assert "\n" not in msg


def test_unreachable_hub_fails_at_once(nowhere, monkeypatch):
    """No network (here: nothing listens at the endpoint) is found by a quick probe, not the client's retries."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError, match="cannot be reached"):
        resolve_weights("test_resnet")
    assert time.perf_counter() - start < 5


def test_missing_config_file_names_the_key(nowhere):
    with pytest.raises(WeightsNotFoundError, match=r"^model\.image_encoder\.weights: .*nothere\.pth"):
        resolve_weights("test_resnet", str(nowhere / "nothere.pth"))


def test_train_cli_checks_weights_before_reading_slides_or_writing(nowhere, tmp_path):
    """The CLI names the key before any slide is read (the slide here does not even exist) and leaves no run
    folder behind."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"base": str(CONFIGS / "cpu" / "bleep.yaml"),
                                      "model": {"image_encoder": {"backbone": "test_resnet"}}}))
    out = tmp_path / "runs" / "x"
    env = {k: v for k, v in __import__("os").environ.items() if k != "STGRAPH_WEIGHTS"}
    proc = subprocess.run([sys.executable, "-m", "stgraph.cli", "train", "--config", str(config), "--data",
                           str(tmp_path / "no_such_slide.h5ad"), "--out", str(out),
                           f"data.cache_dir={tmp_path / 'cache'}"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "model.image_encoder.weights" in proc.stderr and "no_such_slide" not in proc.stderr
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_shared_imagenet_file_found_through_the_lookup(monkeypatch):
    """$STGRAPH_WEIGHTS pointing at the shared folder: the CPU configs find the file there (set here, so the
    test does not depend on what the caller's environment holds)."""
    require_shared(MOBILENET)
    from stgraph.config import load_config
    from stgraph.models.weights import check_pretrained_weights

    monkeypatch.setenv("STGRAPH_WEIGHTS", str(MOBILENET.parent))
    source = check_pretrained_weights(load_config(CONFIGS / "cpu" / "bleep.yaml"))
    assert source.file.resolve() == MOBILENET.resolve()
