# `make setup` installs everything into .venv, `make test` runs the test suite (all but the tests marked slow),
# `make test-slow` runs only the slow ones (real HER2+ sections; .ci/run runs both), `make demo` runs the main job.
# `make test` and `make demo` build .venv first when it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HER2ST ?= ../shared/data/her2st
RUN ?= runs/bleep_her2st
export STGRAPH_WEIGHTS ?= $(abspath ../shared/weights)

STAMP := $(VENV)/pyvenv.cfg

.PHONY: setup test test-slow demo

# The file target: (re)install when .venv is missing or pyproject.toml is newer than the last install
# (pyvenv.cfg is touched after every install).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

setup:
	$(MAKE) --always-make $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# Exit status 5 means no test was collected (e.g. a selection without slow tests): not a failure.
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow || [ $$? -eq 5 ]

demo: $(STAMP)
	$(VENV)/bin/stgraph train --config configs/cpu/bleep.yaml --her2st $(HER2ST) \
		--sections B4 C2 C3 C4 C5 --out $(RUN) --force \
		data.genes=$(HER2ST)/her_hvg_cut_1000.npy
	$(VENV)/bin/stgraph predict --model $(RUN) --her2st $(HER2ST) --section C6 \
		--out $(RUN)_C6.h5ad --force --plot FASN IGKC COL3A1
