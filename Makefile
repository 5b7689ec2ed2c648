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

# iptables makes the chaos harness's partitions (docs/RELIABILITY.md); installed when run as root with apt,
# otherwise the partition tests skip and say why.
$(VENV)/.system: | $(VENV)/.installed
	@export DEBIAN_FRONTEND=noninteractive; if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! command -v iptables >/dev/null; then \
		apt-get install -y -q iptables >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null 2>&1 && apt-get install -y -q iptables >/dev/null 2>&1) || \
		echo "could not install iptables: the partition tests will skip"; fi
	touch $@

test: $(VENV)/.installed $(VENV)/.system
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(PY) -m pyflakes consensus commit bench chaos examples node.py tests
	$(PY) -m mypy --ignore-missing-imports consensus commit bench chaos examples node.py

bench: $(VENV)/.installed
	$(PY) -m bench run

down: $(VENV)/.installed
	$(PY) node.py down

clean:
	rm -rf $(VENV) data
