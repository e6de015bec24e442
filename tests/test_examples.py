"""Every script in examples/ runs as its docstring documents it (each documented command line, as written, in a
folder laid out like a checkout), and with --tiny settings (a smoke test); offline, a missing weights file is
the one-line error, not a traceback."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import HER2ST, MOBILENET, doc_workdir, require_shared

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NEEDS_HER2ST = {"train_predict_her2st.py", "predict_visium.py"}
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))


def documented(script: str) -> list[list[str]]:
    """The command lines a script's docstring documents (``python examples/<script> ...``, comments dropped)."""
    doc = (EXAMPLES / script).read_text().split('"""')[1]
    lines = re.findall(rf"^\s+python (examples/{re.escape(script)}[^#\n]*)", doc, flags=re.M)
    return [shlex.split(line) for line in lines]


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "STGRAPH_WEIGHTS": str(MOBILENET.parent),
            "STGRAPH_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}


def test_every_example_documents_how_to_run_it():
    assert all(documented(s) for s in SCRIPTS), [s for s in SCRIPTS if not documented(s)]


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs_as_documented(script, tmp_path):
    require_shared(MOBILENET)
    if script in NEEDS_HER2ST:
        require_shared(HER2ST)
    work = doc_workdir(tmp_path)
    for argv in documented(script):
        out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=work, timeout=900,
                             env=_env(tmp_path))
        assert out.returncode == 0, (argv, out.stderr[-3000:])


@pytest.mark.slow
def test_an_example_without_its_weights_offline_is_one_line(tmp_path):
    work = doc_workdir(tmp_path)
    env = {**_env(tmp_path), "STGRAPH_WEIGHTS": str(tmp_path / "no_weights_here")}
    out = subprocess.run([sys.executable, "examples/api_on_anndata.py"], capture_output=True, text=True, cwd=work,
                         timeout=300, env=env)
    err = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and len(err) == 1 and "no pretrained weights" in err[0]
    assert "Traceback" not in out.stderr
