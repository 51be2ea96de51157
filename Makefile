# Two entry points (README "Quick start"): `make demo` and `make test`. Each sets itself up from a fresh clone:
# a virtual environment in .venv with the CPU build of torch, then this package with its test extras.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test setup clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/nncf-moe3 demo

test: $(STAMP)
	$(BIN)/python -m openvino_ext.build
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) build *.egg-info
