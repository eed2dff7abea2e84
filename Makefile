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
FORCE ?=
MODELS ?=
FORMAT ?= simple

RUN_ARGS = --model $(MODEL) --fraction $(FRACTION) --profile $(PROFILE) \
	$(if $(TASKS),--tasks $(TASKS)) $(if $(SEEDS),--seeds $(SEEDS)) \
	$(if $(WEIGHTS),--weights $(WEIGHTS)) $(if $(REQUIRE_WEIGHTS),--require-weights) \
	$(if $(DATA),--data $(DATA)) $(if $(FORCE),--force)

.PHONY: venv bench test list results phantoms benchmark clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
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
		$(if $(TASKS),--tasks $(TASKS)) \
		$(if $(filter command environment,$(origin FRACTION)),--fraction $(FRACTION))

phantoms: $(STAMP)
	$(BIN)/brainbench phantoms --profile $(PROFILE)

benchmark: $(STAMP)
	$(BIN)/python scripts/benchmark.py --model $(MODEL) --profile $(PROFILE)

clean:
	rm -rf results leaderboard/site .pytest_cache
