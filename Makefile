# `make up` runs the local cluster from cluster.toml; `make test` runs the whole suite.
# Both create the virtual environment (.venv) first if it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: up test lint bench down clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $@

up: $(VENV)/.installed
	$(PY) node.py up

test: $(VENV)/.installed
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(PY) -m pyflakes consensus commit bench examples node.py tests
	$(PY) -m mypy --ignore-missing-imports consensus commit bench examples node.py

bench: $(VENV)/.installed
	$(PY) -m bench run

down: $(VENV)/.installed
	$(PY) node.py down

clean:
	rm -rf $(VENV) data
