# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Both create .venv if missing, install sanitas with its dependencies (torch pinned to the
# CPU build that lies on this machine's disk, see DEVELOPERS.md) and, as root with apt,
# the Debian package dataset-fashion-mnist.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.sanitas-installed
DEMO_OUT ?= sanitas-demo

.PHONY: install data browser demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP) data

data:
	@sh scripts/install-data.sh

browser:
	@sh scripts/install-browser.sh

# A small but complete `reproduce` of the papers (quick profile): ~7 min on 2 cores the first
# time (models are trained and cached), about a minute afterwards; ends with the report's path.
demo: install
	$(BIN)/sanitas reproduce all --quick --out $(DEMO_OUT)

test: install browser
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python -m pip install --quiet -e ".[bench]"

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
