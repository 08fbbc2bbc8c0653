# Developer entry points for mobs_ppl.
#
#   make demo   create .venv if needed, then run the packaged demo into results/
#   make test   create .venv if needed, then run the whole test suite (slow tests included;
#               about an hour on 2 cores)
#   make test-fast  the same without the tests marked slow
#   make docs   install the [docs] extra into .venv, then build the Sphinx site into
#               docs/_build/html with warnings treated as errors
#   make lint   ruff over the sources, tests, benchmarks and tutorials
#   make bench  run the benchmarks
#
# Only `python3` (3.11 or newer) and make are needed on the machine; everything else is
# installed into .venv from pyproject.toml (the package in editable mode plus its [test] extra;
# `make docs` adds the [docs] extra).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs
PYTEST_ARGS ?=

# Real COSMOS data shipped beside the repository (read-only). An explicit
# MOBS_PPL_DATA_DIR always wins; without either, the loader downloads into a user cache.
SHARED_DATA := $(abspath ../shared/data)

.PHONY: venv demo test test-fast lint bench docs clean

venv: $(STAMP)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "mobs_ppl needs Python 3.11 or newer; '$(PYTHON)' is $$($(PYTHON) --version 2>&1)." \
	         "Set PYTHON=/path/to/python3.11 (make PYTHON=...)." >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Re-install whenever pyproject.toml changes (new dependency, new extra, new entry point).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[test]"
	@touch $@

# The documentation tools, installed on their own stamp (again when pyproject.toml changes).
$(DOCS_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[docs]"
	@touch $@

ifeq ($(strip $(MOBS_PPL_DATA_DIR)),)
ifneq ($(wildcard $(SHARED_DATA)/.),)
demo test test-fast bench docs: export MOBS_PPL_DATA_DIR := $(SHARED_DATA)
endif
endif

demo: venv
	$(BIN)/mobs-ppl demo --out results/

test: venv
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=25 $(PYTEST_ARGS)

test-fast: venv
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=25 \
	  -m "not slow" $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check $(wildcard src tests benchmarks tutorials)

bench: venv
	$(BIN)/python benchmarks/run.py
	@for script in inference error_bars scaling newton_step; do \
	  if [ -f benchmarks/$$script.py ]; then $(BIN)/python benchmarks/$$script.py || exit 1; fi; \
	done

# The tutorials run (in their quick mode) when the COSMOS data are found, so that their
# pages show output and figures; MOBS_PPL_DOCS_EXECUTE=0 builds without running them.
MOBS_PPL_DOCS_EXECUTE ?= auto
MOBS_PPL_TUTORIAL_QUICK ?= 1

docs: $(DOCS_STAMP)
	MOBS_PPL_DOCS_EXECUTE=$(MOBS_PPL_DOCS_EXECUTE) MOBS_PPL_TUTORIAL_QUICK=$(MOBS_PPL_TUTORIAL_QUICK) \
	  $(BIN)/sphinx-build -W --keep-going -b html docs docs/_build/html

clean:
	rm -rf $(VENV) results/ build/ dist/ src/*.egg-info docs/_build docs/tutorials .pytest_cache .ruff_cache
