# `make demo` and `make test` work on a fresh machine: they create .venv when it is missing and
# (re)install the package whenever pyproject.toml changed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gflow demo

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q -n 2

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

lint: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks

# Benchmarks (minutes, not part of CI). scikit-sundae (CVODE) and PyTorch's CPU build are installed
# for the CVODE and GD contenders.
bench: $(STAMP)
	$(BIN)/python -c "import sksundae" 2>/dev/null || $(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install "torch==2.13.0+cpu" \
		--extra-index-url https://download.pytorch.org/whl/cpu
	$(BIN)/python benchmarks/solvers.py --problem A
	$(BIN)/python benchmarks/solvers.py --problem B
	$(BIN)/python benchmarks/scale.py --problem C --contenders default,krylov,cvode-gmres,tsit5

clean:
	rm -rf $(VENV) gflow-demo .pytest_cache
