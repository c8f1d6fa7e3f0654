# `make run` and `make test` set everything up themselves on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.8
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
BIN := $(VENV)/bin
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: run test lint typecheck pytest openapi migrate format clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python $(PYTHON)
	@touch $@

run: $(VENV)/.synced  ## serve the API on 127.0.0.1:8000 (embedded SQLite)
	$(BIN)/sso-broker serve --host 127.0.0.1 --port 8000

migrate: $(VENV)/.synced
	$(BIN)/sso-broker migrate

test: lint typecheck pytest  ## every check: ruff, mypy, all tests

lint: $(VENV)/.synced
	$(BIN)/ruff check src tests migrations
	$(BIN)/ruff format --check src tests migrations

typecheck: $(VENV)/.synced
	$(BIN)/mypy src

pytest: $(VENV)/.synced
	$(BIN)/pytest

openapi: $(VENV)/.synced  ## regenerate openapi/openapi.json from the app
	$(BIN)/sso-broker openapi > openapi/openapi.json

format: $(VENV)/.synced
	$(BIN)/ruff check --fix src tests migrations
	$(BIN)/ruff format src tests migrations

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
