"""Shared fixtures: tiny configs over the published ones, synthetic slides, the shared data folder."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tiny tensors: thread start-up costs more than it saves, and CI has two cores.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
# The shared data and weights: ../shared beside the checkout, or wherever STGRAPH_SHARED points.
SHARED = Path(os.environ.get("STGRAPH_SHARED") or REPO.parent / "shared")
HER2ST = SHARED / "data" / "her2st"
MOBILENET = SHARED / "weights" / "mobilenetv2_100.imagenet.pth"

# Configs name a timm model and `pretrained: true`; the shared ImageNet file is found the way a user's would
# be, through the $STGRAPH_WEIGHTS folder (stgraph.models.weights), never by a path in a config.
if MOBILENET.parent.is_dir():
    # Set, not defaulted: the suite never depends on what the caller's environment points at.
    os.environ["STGRAPH_WEIGHTS"] = str(MOBILENET.parent)

METHOD_CONFIGS = sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yaml"))


def _closed_form(name: str) -> bool:
    """A model fitted by its own ``fit`` (its spec: ridge, spot_graph), not by the contrastive Trainer."""
    from stgraph.config import load_config
    from stgraph.models import model_spec

    return not model_spec(load_config(CONFIGS / name)).trainer


#: Configs whose model is fitted by its own ``fit`` (ridge, spot_graph), and the ones the Trainer trains.
CLOSED_FORM_CONFIGS = [c for c in METHOD_CONFIGS if _closed_form(c)]
TRAINED_CONFIGS = [c for c in METHOD_CONFIGS if c not in CLOSED_FORM_CONFIGS]


def doc_workdir(tmp_path: Path) -> Path:
    """A folder laid out as a user's checkout (``configs``, ``examples``, ``Makefile``, ``.venv`` linked to this
    one's, ``../shared`` beside it), where the README's, the docs' and the examples' commands run exactly as
    written, writing their ``runs/`` there and not into the repository."""
    work = tmp_path / "work"
    work.mkdir(parents=True, exist_ok=True)
    for name in ("configs", "examples", "benchmarks", "Makefile", "pyproject.toml", ".venv"):
        if (REPO / name).exists() and not (work / name).exists():
            (work / name).symlink_to(REPO / name)
    if not (tmp_path / "shared").exists():
        (tmp_path / "shared").symlink_to(SHARED)
    return work


def tiny_overrides(cache_dir: Path, epochs: int = 2) -> list[str]:
    """Overrides that keep a config's modules but shrink it to run in a second on a CPU."""
    return [
        "model.image_encoder.backbone=test_resnet",
        "model.image_encoder.pretrained=false",
        "model.image_encoder.weights=null",
        "model.image_encoder.input_size=32",
        "model.image_encoder.model_kwargs={}",
        "model.embed_dim=16",
        "model.pca_components=8",
        "model.image_dgi.hidden_dim=16",
        "model.spot_dgi.hidden_dim=16",
        "model.spot_encoder.heads=2",
        "model.spot_encoder.dim_head=8",
        "data.patch_size=32",
        "data.n_top_hvg=20",
        "data.include_genes=null",  # the shipped marker list names human genes the synthetic slides lack
        "data.harmony_pcs=5",
        f"data.cache_dir={cache_dir}",
        f"train.epochs={epochs}",
        "train.batch_size=32",
        "train.progress=false",
        "train.device=cpu",
        "inference.k=5",
        # The trust record retrains a Trainer model once per training slide: tests that are not about it skip
        # it (tests/test_trust.py switches it on).
        "trust.reliability=false",
    ]


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory):
    """Configs default to the user cache dir (data.cache_dir: auto): point it at a temporary folder so the
    suite never writes into the real ~/.cache."""
    import os

    old = os.environ.get("STGRAPH_CACHE_DIR")
    os.environ["STGRAPH_CACHE_DIR"] = str(tmp_path_factory.mktemp("stgraph_cache"))
    yield
    if old is None:
        os.environ.pop("STGRAPH_CACHE_DIR", None)
    else:
        os.environ["STGRAPH_CACHE_DIR"] = old


@pytest.fixture
def tiny_config(tmp_path):
    """``tiny_config("bleep.yaml", "train.epochs=3")`` → a validated tiny Config."""
    from stgraph.config import load_config

    def make(name: str, *extra: str):
        import warnings

        from stgraph.config.load import IgnoredOptionWarning

        with warnings.catch_warnings():  # the tiny overrides shrink every kind's settings, read or not
            warnings.simplefilter("ignore", IgnoredOptionWarning)
            return load_config(CONFIGS / name, tiny_overrides(tmp_path / "cache") + list(extra))

    return make


@pytest.fixture(scope="session")
def synthetic_slides():
    """Three small synthetic slides sharing expression programmes (image → expression signal)."""
    from stgraph.data.synthetic import make_synthetic_collection

    return make_synthetic_collection(n_slides=3, n_rows=10, n_cols=10, n_genes=40, spacing=32)


@pytest.fixture(scope="session")
def slide_files(tmp_path_factory, synthetic_slides) -> list[str]:
    """The three synthetic slides written as ``.h5ad`` files, for command-line tests."""
    d = tmp_path_factory.mktemp("slides")
    paths = []
    for ad in synthetic_slides:
        p = d / f"{ad.obs['slide_id'].iloc[0]}.h5ad"
        ad.write_h5ad(p)
        paths.append(str(p))
    return paths


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One patch/feature cache for every test that reads the real HER2+ sections (keys are content hashes)."""
    return tmp_path_factory.mktemp("her2st_cache")


def require_shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found at {path}")
    return path
