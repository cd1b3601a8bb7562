# Two commands run everything from a fresh clone (see README):
#   make course   set up, fetch the data, run every notebook headless (papermill)
#   make test     set up, run the test suite
# The virtual environment is (re)installed only when pyproject.toml changes.

# An offline classroom share beside the checkout, ../shared (the dataset archive and pretrained
# backbones), is picked up automatically; a TLCOURSE_* variable already set always wins.
ROOT   := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
SHARED := $(abspath $(ROOT)/../shared)
ifeq ($(origin TLCOURSE_DATA_MIRROR),undefined)
ifneq ($(wildcard $(SHARED)/datasets/hymenoptera_data.zip),)
export TLCOURSE_DATA_MIRROR := $(SHARED)/datasets/hymenoptera_data.zip
endif
endif
ifeq ($(origin TLCOURSE_WEIGHTS_DIR),undefined)
ifneq ($(wildcard $(SHARED)/weights/*.pth $(SHARED)/weights/*.pt),)
export TLCOURSE_WEIGHTS_DIR := $(SHARED)/weights
endif
endif

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tlcourse-installed
ARGS   ?=

.PHONY: help install data course site test test-fast lint bench lab doctor student grade clean-venv

help:
	@echo "make course   run every notebook headless into notebooks/executed/ (sets up first)"
	@echo "make test     run the tests (sets up first)"
	@echo "make site     build the executed course as a static website in build/site/ (runs missing notebooks first)"
	@echo "make lab      open the course in JupyterLab (runs make doctor first)"
	@echo "make doctor   check what the course needs (python, torch, JupyterLab, widgets, data, weights, disk)"
	@echo "make data     download the ants/bees dataset into data/"
	@echo "make bench    CPU speed benchmark (plain loop vs tlcourse's fast path)"
	@echo "make lint     ruff (style, imports, likely bugs)"
	@echo "make student  the learner's notebooks (no solutions) and nbgrader's grading files, in release/"
	@echo "make grade    autograde release/submitted/<student>/tlcourse/*.ipynb with nbgrader"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing tlcourse and its dependencies into $(VENV) (first time: a few minutes)"
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev,site]"
	@touch $(STAMP)

install: $(STAMP)

data: install
	$(PY) -m tlcourse data

course: install
	$(PY) -m tlcourse course $(ARGS)

# The website of the executed course (Sphinx + MyST-NB, offline); notebooks whose executed copy is
# missing or older than the source run first. Open: python -m http.server -d build/site --bind 127.0.0.1
site: install
	$(PY) -m tlcourse site $(ARGS)

test: install
	$(PY) -m pytest $(ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow and not notebooks" $(ARGS)

lint: install
	$(VENV)/bin/ruff check tlcourse tests benchmarks

bench: install
	$(PY) -m tlcourse bench $(ARGS)

doctor: install
	$(PY) -m tlcourse doctor

# Exercises (README, "Grading"): nbgrader writes the learner's version and grades submissions.
student: install
	$(PY) -m tlcourse release $(ARGS)

grade: install
	$(PY) -m tlcourse grade $(ARGS)

# The doctor's table comes first; a FAIL row (e.g. no dataset offline) still opens JupyterLab,
# because notebooks 01-02 need neither data nor pretrained weights.
lab: install
	@$(PY) -m tlcourse doctor || echo "make lab: fix the FAIL rows above for the whole course; opening JupyterLab anyway"
	$(VENV)/bin/jupyter lab notebooks/

clean-venv:
	rm -rf $(VENV)
