# Two entry points: `make demo` (install, then the main job on the embedded default) and
# `make test` (install, then the test suite). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch 2.13.0: installed first so that the package's torch range is already met
# and pip never pulls a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: demo test install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/difffeat-tune run heuristic

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
