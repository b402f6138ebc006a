# The two commands: `make dev` and `make test`. Both create .venv and install on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export CONVERSION_SYNC_DATA_DIR ?= $(CURDIR)/.data
export CONVERSION_SYNC_CONFIG ?= $(CURDIR)/syncs

.PHONY: dev test test-reliability bench lint stop clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11+ is required (python3.11 or python3 on PATH)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

dev: $(STAMP)
	$(BIN)/python -m conversion_sync.dev.launcher

test: $(STAMP)
	$(BIN)/python -m pytest

test-reliability: $(STAMP)
	$(BIN)/python -m pytest -m reliability

bench: $(STAMP)
	$(BIN)/python -m bench

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

stop: $(STAMP)
	$(BIN)/conversion-sync store stop

clean: stop
	rm -rf .data
