# Each target sets itself up: `make demo` and `make test` work on a fresh clone.
VENV ?= .venv
PY := $(VENV)/bin/python
# notebooks are committed without outputs, with their cell ids and without papermill's metadata
NBSTRIPOUT_FLAGS := --keep-id --extra-keys "metadata.papermill cell.metadata.papermill cell.metadata.execution"

.PHONY: setup demo test test-slow lint bench clean

setup: $(VENV)/.installed

# torch==2.13.0 first: the CPU build (on GPU servers use environment.yml instead).
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	-git rev-parse --git-dir >/dev/null 2>&1 && $(VENV)/bin/nbstripout --install && \
		git config filter.nbstripout.clean '"$(abspath $(VENV))/bin/nbstripout" $(NBSTRIPOUT_FLAGS)'
	touch $@

demo: setup
	$(PY) -m segkit demo

test: setup
	$(PY) -m pytest

test-slow: setup
	$(PY) -m pytest -m slow

# ruff, and the layer rule: no import from a lower folder of segkit to a higher one
lint: setup
	$(VENV)/bin/ruff check segkit tests benchmarks notebooks
	$(PY) -m pytest -q -p no:cacheprovider -o addopts= tests/test_layers.py

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf outputs/cache outputs/runs outputs/predictions outputs/pseudo outputs/ensembles
