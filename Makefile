# Everything a fresh machine needs. torch is pinned in the same resolve as the rest, so pip never
# pulls a CUDA build on CPU machines (see ../shared/notes/stack-on-cpu.md).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: install test demo clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "$(TORCH)" -e ".[test]"
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m pytest tests

demo: install
	$(BIN)/loramix demo

clean:
	rm -rf $(VENV) runs .pytest_cache
