# Two commands run everything from a fresh clone (see README):
#   make course   set up, fetch the data, run every notebook headless (papermill)
#   make test     set up, run the test suite
# The virtual environment is (re)installed only when pyproject.toml changes.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tlcourse-installed
ARGS   ?=

.PHONY: help install data course test test-fast lint bench lab clean-venv

help:
	@echo "make course   run every notebook headless into notebooks/executed/ (sets up first)"
	@echo "make test     run the tests (sets up first)"
	@echo "make lab      open the course in JupyterLab"
	@echo "make data     download the ants/bees dataset into data/"
	@echo "make bench    CPU speed benchmark (plain loop vs tlcourse's fast path)"
	@echo "make lint     ruff (style, imports, likely bugs)"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing tlcourse and its dependencies into $(VENV) (first time: a few minutes)"
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

data: install
	$(PY) -m tlcourse data

course: install
	$(PY) -m tlcourse course $(ARGS)

test: install
	$(PY) -m pytest $(ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow and not notebooks" $(ARGS)

lint: install
	$(VENV)/bin/ruff check tlcourse tests benchmarks

bench: install
	$(PY) -m tlcourse bench $(ARGS)

lab: install
	$(VENV)/bin/jupyter lab notebooks/

clean-venv:
	rm -rf $(VENV)
