# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench bench-quick clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU torch first, pinned: a bare torch requirement would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev,bench,ray]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/nem-faiss models fetch potion-8m
	$(BIN)/python examples/demo.py

test: install
	$(BIN)/python -m pytest -q -ra

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python benchmarks/run.py

bench-quick: install
	$(BIN)/python benchmarks/run.py --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
