# Two commands do all set-up on a fresh machine with Python 3.11+: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: demo test lint plan bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The relay and its runtime dependencies only (what the container image gets).
$(VENV)/.relay-installed: pyproject.toml | $(BIN)/python
	$(PIP) install -e .
	touch $@

# Everything: relay + Pulumi SDKs + test tools.
$(VENV)/.all-installed: pyproject.toml | $(BIN)/python
	$(PIP) install -e ".[infra,test]"
	touch $@ $(VENV)/.relay-installed

demo: $(VENV)/.relay-installed
	$(BIN)/python -m devtools.demo

test: $(VENV)/.all-installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(VENV)/.all-installed
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .demo
