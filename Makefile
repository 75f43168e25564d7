# The README names these targets. `make run` and `make test` set everything up themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run worker api test test-db test-e2e lint format typecheck check clean chaos chaos-ci histories

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Run Temporal (durable data file + Web UI), the worker and the API; Ctrl-C stops all.
run: install
	./scripts/run.sh

## Every test: workflows (time-skipping server), activities (database), end-to-end (dev server).
test: install
	$(BIN)/pytest -q

## Only the tests that touch the database (run again with DATABASE_URL=postgresql://...).
test-db: install
	$(BIN)/pytest -q tests/activities tests/workflows

test-e2e: install
	$(BIN)/pytest -q tests/e2e

## Re-record tests/histories/*.json (one closed history per saga path, replayed by
## tests/workflows/test_replay.py). Only for a deliberately incompatible workflow change.
histories: install
	$(BIN)/python -m scripts.record_histories

## Fault injection on the real stack: 300 sagas, 20 worker kills, 4 Temporal restarts,
## 2 database outages, then every invariant checked (PostgreSQL; CHAOS_ARGS=--database sqlite).
chaos: install
	$(BIN)/python -m chaos $(CHAOS_ARGS)

## The small chaos run CI does on PostgreSQL.
chaos-ci: install
	$(BIN)/python -m chaos --sagas 40 --kills 3 --restarts 1 --outages 1 $(CHAOS_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: install
	$(BIN)/mypy .

check: lint typecheck test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
