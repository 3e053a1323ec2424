# digit-pipeline: `make run` (full competition job), `make quick` (2-core CPU, ~7 min with bf16, ~14 in float32), `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
STAMP := $(VENV)/.installed
# Hydra overrides composed into params.yaml over the profile, e.g. make quick SET='train.epochs=10'
SET ?=

.DEFAULT_GOAL := help
.PHONY: help install data run quick dashboard test test-fast lint format clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,jax,dashboard]'
	touch $@

install: $(STAMP) ## create .venv and install the pinned dependencies

data: $(STAMP) ## make sure data/raw holds the competition data (kaggle download if credentials exist)
	$(BIN)/python -m pipeline.tools.download

run: data ## the full competition job (on a CPU: prints its estimated time first) -> submissions/latest.csv
	$(BIN)/python -m pipeline.params --profile full $(SET)
	$(BIN)/python -m pipeline.tools.estimate
	$(BIN)/dvc repro

quick: data ## the quick profile (2-core CPU, about 7 minutes with bf16, 14 in float32) through the same dvc.yaml
	$(BIN)/python -m pipeline.params --profile quick $(SET)
	$(BIN)/dvc repro

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
	rm -rf data/processed/*.npz data/processed/best_params.json models submissions/*.csv
	[ ! -d reports ] || find reports -mindepth 1 -maxdepth 1 ! -name ablation.md -exec rm -rf {} +
