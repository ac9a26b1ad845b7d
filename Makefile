# The two entry points a newcomer needs. Both create .venv and install what they use.
# torch==2.13.0 is installed first so pip takes the CPU wheel instead of resolving a CUDA build.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast lint

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

setup: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'

demo: setup
	$(BIN)/iddpm demo

lint: setup
	$(BIN)/ruff format --check src tests benchmarks experiments
	$(BIN)/ruff check src tests benchmarks experiments

test: lint
	$(BIN)/python -m pytest -q

# Everything but the end-to-end tests marked `slow` (demo, ablation, multi-process runs,
# training from the CLI), on two worker processes of one thread each: under a minute on the
# project's 2-core machine (1,747 tests: 57 s; 75 s in one process), for the edit-test loop.
test-fast: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not slow" -n 2
