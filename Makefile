# Two commands: `make demo` (the main job on the embedded tiny lab) and `make test` (all tests).
# Each creates .venv on first use. The CPU torch wheel is installed *before* the package so that pip
# never resolves `torch` to a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,trl]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/aspo train

test: $(STAMP)
	$(PY) -m pytest -q
