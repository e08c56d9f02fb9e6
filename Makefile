# Two commands do all set-up on a fresh machine with Python 3.11+: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: demo test lint plan plan-diff smoke bench clean

# Set-up steps write to stderr, so that `make plan` keeps stdout for its JSON even on a first run.
$(BIN)/python:
	@echo "creating $(VENV)" >&2
	@$(PYTHON) -m venv $(VENV) >&2

# The relay and its runtime dependencies only (what the container image gets).
$(VENV)/.relay-installed: pyproject.toml | $(BIN)/python
	@echo "installing the relay into $(VENV)" >&2
	@$(PIP) install -e . >&2
	@touch $@

# Everything: relay + Pulumi SDKs + test tools.
$(VENV)/.all-installed: pyproject.toml | $(BIN)/python
	@echo "installing the relay, relay-dev, the Pulumi SDKs and the test tools into $(VENV)" >&2
	@$(PIP) install -e ".[infra,test,dev,otel,smoke]" >&2
	@touch $@ $(VENV)/.relay-installed

demo: $(VENV)/.relay-installed
	$(BIN)/python -m devtools.demo

# Azurite (the Azure Storage emulator) for the storage tests, when Node.js is there; without it
# those tests skip and say why (CI sets REQUIRE_E2E=1, which turns the skip into a failure).
node_modules/.installed: package.json package-lock.json
	@if command -v npm >/dev/null; then npm ci --no-audit --no-fund --loglevel=error >&2 && touch $@; \
	else echo "npm not found: Azure Storage tests will be skipped (install Node.js 20+)"; fi

test: $(VENV)/.all-installed node_modules/.installed
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest

lint: $(VENV)/.all-installed
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

# Offline preview of a Pulumi stack: the resources and inputs `pulumi up` would declare for
# stacks/Pulumi.$(STACK).yaml, as sorted JSON on stdout (notes on stderr); no cloud, no credentials.
STACK ?= dev
plan: $(VENV)/.all-installed
	@$(BIN)/python -m infra.plan $(STACK)

# What a change does to a stack's declared resources: the offline plan of the working tree against the
# one at BASE (a git ref; HEAD, the default, shows uncommitted changes), per resource and property, as
# Markdown for a pull-request comment. `make plan-diff BASE=origin/main STACK=prod`
BASE ?= HEAD
plan-diff: $(VENV)/.all-installed
	@$(BIN)/python -m infra.plan_diff $(BASE) $(STACK)

# After `pulumi up`: a test notification through the stack's action group (ARM createNotifications),
# then the relay's own record of it and the ticket it opened, read from the deployed store with the
# signed-in identity (az login; its Storage Table Data Reader role comes from monitoring.smokeReaderPrincipalId).
# Needs the Pulumi CLI for the stack's outputs. `make smoke STACK=dev`
smoke: $(VENV)/.all-installed
	@$(BIN)/python -m devtools.smoke $(STACK)

# Benchmarks: they start and stop everything themselves and write docs/benchmarks.md (never a test).
bench: $(VENV)/.all-installed
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk >&2; } || \
	  { echo "bench needs wrk: apt-get install wrk" >&2; exit 1; }
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) node_modules .pytest_cache .ruff_cache .demo
