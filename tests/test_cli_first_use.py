"""What a first-time user meets at the command line: quiet third-party logs, debug lines under -v, help text
for every option, outputs that read cleanly, and no signal handler installed into a Python caller."""
from __future__ import annotations

import logging
import re
import signal
import subprocess
import sys
import tomllib

import pytest

from cli.main import build_parser, main
from tests.conftest import CONFIGS, REPO, tiny_overrides


def test_main_installs_no_sigterm_handler_only_the_console_entry_point_does(capsys):
    before = signal.getsignal(signal.SIGTERM)
    assert main(["configs"]) == 0
    assert signal.getsignal(signal.SIGTERM) is before
    code = ("import signal, sys; sys.argv = ['stgraph', 'configs']\n"
            "from cli.main import console_main\n"
            "assert console_main() == 0\n"
            "print('HANDLER', signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HANDLER True" in out.stdout
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["stgraph"] == "stgraph.cli.main:console_main"


@pytest.mark.parametrize("verbose", [False, True])
def test_third_party_info_is_quiet_unless_verbose(verbose):
    code = ("import logging\nfrom cli.main import configure_logging\n"
            f"configure_logging({verbose})\n"
            "logging.getLogger('faiss.loader').info('THIRD-PARTY INFO')\n"
            "logging.getLogger('stgraph.retrieval.knn').info('OWN INFO')\n"
            "logging.getLogger('stgraph.retrieval.knn').debug('OWN DEBUG')\n")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         timeout=120).stderr
    assert "OWN INFO" in err
    assert ("THIRD-PARTY INFO" in err) == verbose and ("OWN DEBUG" in err) == verbose


def test_debug_lines_say_config_backend_cache_and_time(tmp_path, synthetic_slides, caplog):
    from stgraph.config import load_config
    from stgraph.inference import predict_slide
    from stgraph.training import train_model

    cfg = load_config(CONFIGS / "bleep.yaml", tiny_overrides(tmp_path / "cache", epochs=1)
                      + ["data.harmony=false", "inference.backend=auto"])
    with caplog.at_level(logging.DEBUG, logger="stgraph"):
        run = train_model(cfg, synthetic_slides[:2], out=tmp_path / "run")
        predict_slide(run, synthetic_slides[0])
    text = caplog.text
    assert "resolved config:" in text and "epochs: 1" in text
    assert re.search(r"trained \S+ on 2 slide\(s\) in [\d.]+ s", text)
    assert "kNN backend auto →" in text
    assert "patch cache hit" in text  # the training slide's patches, again at prediction


def test_every_option_has_help_and_the_top_level_help_has_no_markup():
    parser = build_parser()
    assert "``" not in parser.format_help()
    sub = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    missing = [(name, a.option_strings) for name, p in sub.choices.items() for a in p._actions
               if a.option_strings and not a.help]
    assert not missing
    predict = sub.choices["predict"].format_help()
    for option in ("--k", "--similarity", "--aggregation", "--backend", "--min-saturation", "--train-mpp"):
        assert option in predict


@pytest.mark.parametrize("config, chose", [("stgraph.yaml", "alpha"), ("stgraph_graph.yaml", "epochs")])
def test_fitted_runs_report_what_they_chose_not_an_epoch(tmp_path, synthetic_slides, capsys, config, chose):
    # models fitted in one call (their spec's training="fit") have no Trainer epoch: "best epoch 0" was wrong
    paths = []
    for ad in synthetic_slides[:2]:
        path = tmp_path / f"{ad.obs['slide_id'].iloc[0]}.h5ad"
        ad.write_h5ad(path)
        paths.append(str(path))
    overrides = tiny_overrides(tmp_path / "cache") + ["data.harmony=false", "model.spot_graph.select_epochs=[1,2]",
                                                      "model.spot_graph.members=1", "model.spot_graph.hidden=8"]
    assert main(["train", "--config", str(CONFIGS / config), "--data", *paths, "--out",
                 str(tmp_path / "run"), *overrides]) == 0
    out = capsys.readouterr().out
    assert "; fitted (" in out and f"{chose} " in out and "best epoch" not in out


def test_csv_export_names_its_spot_column(tmp_path, synthetic_slides):
    import pandas as pd

    from stgraph.inference.predict import write_prediction

    path = write_prediction(synthetic_slides[0], tmp_path / "p.csv")
    header = path.read_text().splitlines()[0].split(",")
    assert header[:3] == ["spot", "x", "y"]
    table = pd.read_csv(path)
    assert not any(c.startswith("Unnamed") for c in table.columns)
    assert list(table["spot"]) == list(synthetic_slides[0].obs_names)


def test_shipped_configs_point_only_at_documents_that_exist():
    for path in sorted(CONFIGS.rglob("*.yaml")) + [REPO / "README.md", CONFIGS / "README.md"]:
        for doc in re.findall(r"docs/[\w./-]+\.md", path.read_text()):
            assert (REPO / doc).is_file(), f"{path.name} points to a missing {doc}"


def test_nproc_with_a_model_fitted_in_one_call_is_refused_with_the_reason(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    assert main(["train", "--config", "stgraph", "--nproc", "2", "--data", str(tmp_path / "data"), "--out",
                 str(tmp_path / "run")]) == 2
    assert "fitted in one call" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["configs"], ["predict", "--help"]])
def test_quick_commands_do_not_import_torch(argv):
    """--help, --version and configs answer without importing torch (seconds on a loaded machine)."""
    import subprocess
    import sys

    code = ("import sys\nfrom stgraph.cli.main import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)") % (argv,)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout[-500:] + out.stderr[-500:]


def test_the_cli_lets_idle_openmp_threads_sleep_unless_the_user_chose_a_policy():
    """configure_threads runs before torch loads: it sets GOMP_SPINCOUNT, and never overrides a user's own
    OMP_WAIT_POLICY or GOMP_SPINCOUNT (benchmarks/contention.py measures why)."""
    import os
    import subprocess
    import sys

    from stgraph.utils.threads import SPIN_COUNT

    code = ("import os; from stgraph.utils.threads import configure_threads; configure_threads(); "
            "print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))")
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    run = lambda env: subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,  # noqa: E731
                                     text=True, check=True).stdout.split()
    assert run(base) == [SPIN_COUNT, "None"]
    assert run({**base, "OMP_WAIT_POLICY": "ACTIVE"}) == ["None", "ACTIVE"]
    assert run({**base, "GOMP_SPINCOUNT": "5"}) == ["5", "None"]
