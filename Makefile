# The two commands of the Quick start: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench install test-services clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Install, migrate and start the platform on http://127.0.0.1:8000 (SQLite under ./.it0)
run: install
	$(BIN)/it0 serve

## Install dev dependencies and the servers the tests use, then run the whole suite
test: install test-services
	$(BIN)/pytest

test-services:
	bash scripts/test-services.sh

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

bench: install test-services
	$(BIN)/it0 bench platform

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
