"""Every script in examples/ runs end to end with --tiny settings (smoke test)."""
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import HER2ST, require_shared

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NEEDS_HER2ST = {"train_predict_her2st.py", "predict_visium.py"}
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs_with_tiny_settings(script, tmp_path):
    if script in NEEDS_HER2ST:
        require_shared(HER2ST)
    out = subprocess.run([sys.executable, str(EXAMPLES / script), "--tiny", "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=EXAMPLES, timeout=600,
                         env={**__import__("os").environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
