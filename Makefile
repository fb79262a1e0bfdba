# usagestatsd: every target installs what it needs into .venv by itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit venv clean bench soak deb rpm e2e test-ray test-debian-libs

$(STAMP): pyproject.toml
	@if ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then \
		echo "make: $(PYTHON) lacks venv/ensurepip; installing python3-venv with apt"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## make run: a demo Ray session and a local receiver on 127.0.0.1; reports flow every few seconds. Ctrl-C stops.
run: $(STAMP)
	$(VENV)/bin/usagestatsd demo

## make test: ruff, mypy --strict, pytest
test: lint typecheck unit

lint: $(STAMP)
	$(VENV)/bin/ruff check usagestatsd tests bench
	$(VENV)/bin/ruff format --check usagestatsd tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(VPY) -m pytest -q tests --ignore=tests/e2e --ignore=tests/ray

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .pytest_cache .ruff_cache
