SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip -q --disable-pip-version-check
STAMP := $(VENV)/.npzfix-setup
TORCH ?= torch==2.13.0
DEMO ?= demo_data
# pip prints one harmless line per package for this machine's local index mirrors
QUIET := sed '/is ignored: it is neither a file nor a directory/d'   # sed exits 0; pipefail keeps pip's status

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip 2>&1 | $(QUIET)
	$(PIP) install $(TORCH) 2>&1 | $(QUIET)
	$(PIP) install -r requirements.txt 2>&1 | $(QUIET)
	SAM2_BUILD_CUDA=0 $(PIP) install --no-build-isolation --no-deps sam2==1.1.0 2>&1 | $(QUIET)
	# hydra/omegaconf pin ANTLR 4.9; Dagster's selection grammar needs 4.13: a private copy (npzfix_dagster/antlr_compat.py)
	$(PIP) install --no-deps --no-build-isolation -e . 2>&1 | $(QUIET)
	$(PY) -m npzfix_dagster.antlr_compat install 2>&1 | $(QUIET)
	$(PY) -c "import torch, sam2, dagster, cv2, pycocotools, pandas, npzfix_core; print('setup ok: torch', torch.__version__, 'dagster', dagster.__version__)"
	touch $(STAMP)

demo: setup
	$(PY) -m npzfix_tools.demo --data $(DEMO)

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) benchmarks/bench_edges.py
	$(PY) benchmarks/bench_store.py
	$(PY) benchmarks/bench_features.py
	$(PY) benchmarks/bench_verify.py
	$(PY) benchmarks/bench_pipeline_ceiling.py
	$(PY) benchmarks/bench_cost_curves.py
	$(PY) benchmarks/bench_sensor.py
	$(PY) benchmarks/bench_control_plane.py
	$(PY) benchmarks/bench_slurm.py
	$(PY) benchmarks/bench_shards.py

clean:
	rm -rf $(VENV) $(DEMO) demo_home .pytest_cache
