# brainbench: `make bench MODEL=braindino FRACTION=0.01`, `make test`.
# Every target creates the virtual environment first if it is missing.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

MODEL ?= braindino
FRACTION ?= 0.01
PROFILE ?= cpu
TASKS ?=
SEEDS ?=
WEIGHTS ?=
REQUIRE_WEIGHTS ?=
DATA ?=
DATASET ?=
TASK ?=
FORCE ?=
MODELS ?=
FORMAT ?= simple
PROTOCOL ?= linear
TRIALS ?=
PRECISION ?= auto
WORKERS ?=
DEVICE ?=
COMPILE ?=
PREPROCESS ?=
EXECUTOR ?= local
RAY_ADDRESS ?=
SPLIT ?=
# optional extras installed into the venv (CI adds cluster: Ray, for --executor ray)
EXTRAS ?= test

RUN_ARGS = --model '$(MODEL)' --fraction $(FRACTION) --profile $(PROFILE) \
	$(if $(TASKS),--tasks $(TASKS)) $(if $(SEEDS),--seeds $(SEEDS)) \
	$(if $(WEIGHTS),--weights '$(WEIGHTS)') $(if $(REQUIRE_WEIGHTS),--require-weights) \
	$(if $(DATA),--data '$(DATA)') $(if $(DATASET),--dataset $(DATASET)) $(if $(FORCE),--force) \
	--protocol $(PROTOCOL) $(if $(TRIALS),--trials $(TRIALS)) \
	--precision $(PRECISION) $(if $(WORKERS),--workers $(WORKERS)) $(if $(DEVICE),--device $(DEVICE)) \
	$(if $(COMPILE),--compile $(COMPILE)) \
	$(if $(PREPROCESS),--preprocess $(PREPROCESS)) \
	--executor $(EXECUTOR) $(if $(filter ray,$(EXECUTOR)),$(if $(RAY_ADDRESS),--ray-address $(RAY_ADDRESS))) \
	$(if $(SPLIT),--split $(SPLIT))

.PHONY: venv bench test list results phantoms benchmark clean table curves leaderboard data-check \
	validate submit import-bundle analyze

# statistics over stored results: FRACTION / PROFILE only when given on the command line;
# written under the results folder ($BRAINBENCH_RESULTS or results/: reports/, figures/,
# site/) unless OUT= names a folder
STATS_ARGS = $(if $(MODELS),--models $(MODELS)) $(if $(TASKS),--tasks $(TASKS)) \
	$(if $(filter command environment,$(origin FRACTION)),--fraction $(FRACTION)) \
	$(if $(filter command environment,$(origin PROFILE)),--profile $(PROFILE)) \
	$(if $(filter command environment,$(origin PROTOCOL)),--protocol '$(PROTOCOL)') \
	$(if $(REFERENCE),--reference $(REFERENCE)) $(if $(BOOTSTRAP),--bootstrap $(BOOTSTRAP)) \
	$(if $(RESAMPLE),--resample $(RESAMPLE)) $(if $(HIDE_CONTAMINATED),--hide-contaminated) \
	$(if $(OUT),--out '$(OUT)')

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

bench: $(STAMP)
	$(BIN)/brainbench run $(RUN_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

list: $(STAMP)
	$(BIN)/brainbench list tasks
	$(BIN)/brainbench list backbones
	$(BIN)/brainbench list profiles

results: $(STAMP)
	$(BIN)/brainbench results --format $(FORMAT) $(if $(MODELS),--models $(MODELS)) \
		$(if $(TASKS),--tasks $(TASKS)) $(if $(SPLIT),--split $(SPLIT)) \
		$(if $(filter command environment,$(origin FRACTION)),--fraction $(FRACTION)) \
		$(if $(filter command environment,$(origin PROFILE)),--profile $(PROFILE)) \
		$(if $(HIDE_CONTAMINATED),--hide-contaminated)

table: $(STAMP)
	$(BIN)/brainbench table $(STATS_ARGS)

curves: $(STAMP)
	$(BIN)/brainbench curves $(STATS_ARGS)

leaderboard: $(STAMP)
	$(BIN)/brainbench leaderboard $(STATS_ARGS)

# representation analyses (PCA maps, tissue / lesion / site probes; with MODELS=a,b also CKA and
# kNN agreement), on cached features: `make analyze MODEL=braindino` or `MODELS=braindino,random`
analyze: $(STAMP)
	$(BIN)/brainbench analyze $(if $(MODELS),--models $(MODELS),--model '$(MODEL)') \
		--profile $(PROFILE) $(if $(WEIGHTS),--weights '$(WEIGHTS)') $(if $(DATA),--data '$(DATA)')

# a backbone that is not built in (SUBMITTING.md): a card (.toml) or a Python file (.py)
BACKBONE ?=
BUNDLE ?=
SUBMIT_ARGS = '$(BACKBONE)' --profile $(PROFILE) $(if $(WEIGHTS),--weights '$(WEIGHTS)') \
	$(if $(REQUIRE_WEIGHTS),--require-weights) --precision $(PRECISION)

validate: $(STAMP)
	@test -n "$(BACKBONE)" || { echo "usage: make validate BACKBONE=path/to/card.toml"; exit 2; }
	$(BIN)/brainbench validate $(SUBMIT_ARGS)

submit: $(STAMP)
	@test -n "$(BACKBONE)" || { echo "usage: make submit BACKBONE=path/to/card.toml"; exit 2; }
	$(BIN)/brainbench submit $(SUBMIT_ARGS) --fraction $(FRACTION) \
		$(if $(TASKS),--tasks $(TASKS)) $(if $(SEEDS),--seeds $(SEEDS)) \
		$(if $(WORKERS),--workers $(WORKERS)) $(if $(DEVICE),--device $(DEVICE)) \
		$(if $(DATA),--data '$(DATA)')

import-bundle: $(STAMP)
	@test -n "$(BUNDLE)" || { echo "usage: make import-bundle BUNDLE=path/to/bundle"; exit 2; }
	$(BIN)/brainbench import-bundle $(BUNDLE)

phantoms: $(STAMP)
	$(BIN)/brainbench phantoms --profile $(PROFILE)

# validate data before any compute: make data-check TASK=brain_age DATA=/data [DATASET=bids]
data-check: $(STAMP)
	$(BIN)/brainbench data-check --profile $(PROFILE) $(if $(TASK)$(TASKS),--task $(or $(TASK),$(TASKS))) \
		$(if $(DATA),--data '$(DATA)') $(if $(DATASET),--dataset $(DATASET))

benchmark: $(STAMP)
	$(BIN)/python scripts/benchmark.py --model '$(MODEL)' --profile $(PROFILE)

clean:
	rm -rf results .pytest_cache
