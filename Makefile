# Two commands for a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the map page's JavaScript (spacenet7 serve), from the npm registry: no CDN at run time
NODE_STAMP := node_modules/.installed
export HF_HUB_OFFLINE := 1
export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_MODE := offline
export WANDB_SILENT := true
export MPLBACKEND := Agg
RUN_DIR ?= runs/demo

.PHONY: install system-packages demo real model test test-slow lint notebook bench clean serve

# Re-install only when the package metadata changed.
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,fast,serve]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

$(NODE_STAMP): package.json package-lock.json
	npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

install: $(STAMP) $(NODE_STAMP)

# gdal-bin and chromium for two tests (apt, as root; otherwise those tests skip, saying so)
system-packages:
	@bash scripts/system-packages.sh

demo: $(STAMP)
	$(BIN)/spacenet7 pipeline run_dir=$(RUN_DIR)

# The real SN7 data beside the repository (../shared): training from scratch on all but
# the right quarter of each AOI (all 25 months of the time series), then those bands predicted,
# tracked and scored: SCOT and per-place F1 / pixel IoU (conf/recipe/real.yaml). REAL_ARGS: Hydra overrides on
# top, e.g. make real REAL_ARGS=train.max_epochs=120 (a CPU without native bf16: README, "Real data").
REAL_ARGS ?=
real: $(STAMP)
	$(BIN)/spacenet7 pipeline recipe=real $(REAL_ARGS)

# The shipped model (spacenet7/models/shipped/spacenet7-real.bundle, used by predict and serve without
# checkpoint=): `make real`'s last checkpoint as a bundle, with that run's vectorize settings and scores,
# then every inference engine measured on the real held-out bands (~8 min) and the fastest at truth parity
# compiled into it (predict engine=auto runs it).
SHIPPED := spacenet7/models/shipped/spacenet7-real.bundle
model: $(STAMP)
	test -f runs/real/train/checkpoints/last.ckpt || $(MAKE) real
	$(BIN)/spacenet7 bundle checkpoint=runs/real/train/checkpoints/last.ckpt out=$(SHIPPED) recipe_name=real name=spacenet7-real
	$(BIN)/python bench/bench_runtimes.py --checkpoint $(SHIPPED) --json runs/bench/runtime_parity.json
	$(BIN)/spacenet7 compile checkpoint=$(SHIPPED) parity=runs/bench/runtime_parity.json

# --durations: the slowest tests are listed, so the default run can be kept near 10 minutes on 2 cores
test: $(STAMP) $(NODE_STAMP) system-packages
	$(BIN)/python -m pytest -q --durations=15

# ruff's lint rules (pyproject.toml: pyflakes, pycodestyle, isort, bugbear, pyupgrade, Google docstrings),
# ruff's formatting (`ruff format spacenet7 tests bench` applies it) and mypy on the package
lint: $(STAMP)
	$(BIN)/ruff check spacenet7 tests bench
	$(BIN)/ruff format --check spacenet7 tests bench
	$(BIN)/mypy

test-slow: $(STAMP) $(NODE_STAMP)
	$(BIN)/python -m pytest -q -m slow

# the map viewer and inference API over a run (http://127.0.0.1:8000/)
serve: $(STAMP) $(NODE_STAMP)
	$(BIN)/spacenet7 serve run_dir=$(RUN_DIR)

notebook: $(STAMP)
	$(BIN)/pip install --quiet jupyterlab
	SPACENET7_RUN_DIR=$(abspath $(RUN_DIR)) $(BIN)/jupyter lab notebooks/explore_predictions.ipynb

bench: $(STAMP) $(NODE_STAMP)
	for f in bench/bench_*.py bench/oracle_postprocess.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(RUN_DIR) data/synthetic
