# digit-pipeline: `make run` (the full competition job), `make quick` (the quick profile), `make test`.
# the interpreter .venv is made from; a notebook passes its own (PYTHON=python3). Without ensurepip (Kaggle's, Colab's,
# Debian's python3 without python3-venv) .venv is made without pip and gets pip from PYTHON's own pip (22.3 or later).
PYTHON ?= python3.11
# PYTHON as found on the caller's PATH, before .venv/bin goes first on it: once a failed `python3 -m venv .venv` has
# made .venv/bin/python3, a bare `python3` would name that one (without pip) instead of the interpreter meant
HOST_PYTHON := $(or $(shell command -v $(PYTHON) 2>/dev/null),$(PYTHON))
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
STAMP := $(VENV)/.installed
GPU_STAMP := $(VENV)/.installed-gpu
EXTRAS := dev,jax,dashboard
# Hydra overrides composed into params.yaml over the profile, e.g. make quick SET='train.epochs=10'
SET ?=
# make run PROFILE=cpu: the full profile less its bn_lite seeds and its tuning study (conf/profile/cpu.yaml), for a CPU
# without AMX; on a CPU `make run` first prints the estimate here and which profiles and budgets fit 2 h 30 min here
PROFILE ?= full
# make run BUDGET=150: the profile with the most epochs per fold that fit 150 minutes on this machine (estimated, tune
# included; when not even one epoch fits, it stops and says so)
BUDGET ?=
# the columns `make exps` keeps of `dvc exp show` (120 wide): the profile, the settings most runs change, OOF accuracy
EXP_COLUMNS := ^(Experiment|Created|profile|model\.name|train\.epochs|augment\.copies|train\.aug_prob|oof_blend_accuracy)$$

.DEFAULT_GOAL := help
.PHONY: help install install-gpu data run quick exps dashboard test test-fast lint format clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(HOST_PYTHON) -m venv $(VENV) || { echo "make: $(PYTHON) -m venv failed (no ensurepip?): .venv without pip, then pip from $(PYTHON)'s own"; \
	  $(HOST_PYTHON) -m venv --without-pip $(VENV) && $(HOST_PYTHON) -m pip --python $(BIN)/python install --quiet pip; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

$(GPU_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS),gpu]'
	touch $@

install: $(STAMP) ## create .venv and install the pinned dependencies
install-gpu: $(GPU_STAMP) ## install, plus the gpu extra: TensorFlow's and JAX's CUDA 12 builds (Linux, NVIDIA; GBs)

data: $(STAMP) ## make sure data/raw holds the competition data (kaggle download if credentials exist)
	$(BIN)/python -m pipeline.tools.download

run: data ## the full profile (PROFILE=cpu: two members less, no tuning study): on a CPU it first prints its estimate here and what fits 2 h 30 min
	$(BIN)/python -m pipeline.params --profile $(PROFILE) $(SET)
	$(BIN)/python -m pipeline.tools.estimate $(if $(BUDGET),--budget $(BUDGET) $(SET))
	$(BIN)/python -m pipeline.tools.repro

quick: data ## the quick profile (sized for a laptop CPU) through the same dvc.yaml -> submissions/latest.csv
	$(BIN)/python -m pipeline.params --profile quick $(SET)
	$(BIN)/python -m pipeline.tools.repro

exps: $(STAMP) ## the runs (dvc exp show) by their key settings and results, in 120 columns
	$(BIN)/dvc exp show --no-pager --drop '.*' --keep "$(EXP_COLUMNS)"

dashboard: $(STAMP) ## the tuning study in optuna-dashboard at http://127.0.0.1:8080/
	$(BIN)/python -m pipeline.tools.dashboard

test: $(STAMP) ## run every test (the slow end-to-end test uses data/raw/digit-recognizer.zip or DIGIT_ZIP=path)
	$(BIN)/python -m pytest

test-fast: $(STAMP) ## run the unit tests only
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## ruff autofix and format
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean: ## remove generated data, models, reports and submissions (keeps data/raw, the study and the tracked files)
	rm -rf data/processed/*.npz data/processed/best_params.json data/processed/settings_checked.json data/processed/tmp models submissions/*.csv
	[ ! -d reports ] || find reports -mindepth 1 -maxdepth 1 ! -name ablation.md -exec rm -rf {} +
