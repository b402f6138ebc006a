# The two commands: `make dev` and `make test`. Both create .venv and install on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export CONVERSION_SYNC_DATA_DIR ?= $(CURDIR)/.data
export CONVERSION_SYNC_CONFIG ?= $(CURDIR)/syncs

# Everything make runs is local: the embedded store and the stand-ins may start. Elsewhere the default is
# production, where a missing CONVERSION_STORE_URL is an error.
dev test test-reliability bench stop: export CONVERSION_SYNC_ENV := local

.PHONY: dev test browser test-reliability bench lint stop clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11+ is required (python3.11 or python3 on PATH)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

dev: $(STAMP)
	$(BIN)/python -m conversion_sync_dev.launcher

test: $(STAMP) browser
	$(BIN)/python -m pytest

# The end-to-end test renders the Dagster UI in headless Chromium. Install Debian's chromium when it is
# missing and this machine allows it (root and apt-get), as CI does; elsewhere say so and carry on (the
# test then skips only its browser step, with the reason).
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
	  || command -v google-chrome >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium (apt-get) for the end-to-end browser test"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	    || echo "note: chromium could not be installed; the end-to-end browser step will be skipped"; \
	else \
	  echo "note: chromium is not installed and cannot be here (needs root and apt-get);" \
	    "the end-to-end browser step will be skipped"; \
	fi

test-reliability: $(STAMP)
	$(BIN)/python -m pytest -m reliability

bench: $(STAMP)
	$(BIN)/python -m bench

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

stop: $(STAMP)
	$(BIN)/conversion-sync store stop

clean: stop
	rm -rf .data
