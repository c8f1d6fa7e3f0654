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

E2E_OP := tests/e2e/op

.PHONY: run test lint typecheck pytest openapi migrate format clean e2e-deps demo bench

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
	$(BIN)/ruff check src tests migrations bench
	$(BIN)/ruff format --check src tests migrations bench

typecheck: $(VENV)/.synced
	$(BIN)/mypy src

pytest: $(VENV)/.synced e2e-deps
	$(BIN)/pytest

# The end-to-end tier's OpenID Provider (npm: oidc-provider). Without npm the tier skips,
# unless SSO_BROKER_REQUIRE_E2E=1 (CI), which makes it fail.
e2e-deps:
	@if command -v npm >/dev/null 2>&1; then \
		if [ ! -f $(E2E_OP)/node_modules/.package-lock.json ] || \
		   [ $(E2E_OP)/package-lock.json -nt $(E2E_OP)/node_modules/.package-lock.json ]; then \
			cd $(E2E_OP) && npm ci --no-audit --no-fund --loglevel=error; \
		fi; \
	else echo "npm not found: the e2e tier will skip (install Node.js to run it)"; fi

demo: $(VENV)/.synced e2e-deps  ## OP + broker + frontend, seeded; prints the URL to open
	$(BIN)/python examples/demo.py

# The benchmark (bench/README.md): make bench BENCH_ARGS="--scale small,large" for everything.
# Single routes are driven by wrk (Debian's package, installed here when missing).
bench: $(VENV)/.synced  ## measure the service on loopback against a bare FastAPI hello
	@command -v wrk >/dev/null 2>&1 || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends wrk; } || \
		echo "wrk could not be installed: single routes will be driven from Python"
	$(BIN)/python -m bench $(BENCH_ARGS)

openapi: $(VENV)/.synced  ## regenerate openapi/openapi.json from the app
	$(BIN)/sso-broker openapi > openapi/openapi.json

format: $(VENV)/.synced
	$(BIN)/ruff check --fix src tests migrations bench
	$(BIN)/ruff format src tests migrations bench

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
