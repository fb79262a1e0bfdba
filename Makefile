# usagestatsd: every target installs what it needs into .venv by itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit venv clean bench soak test-ray test-debian-libs test-ray-matrix test-ray-ci

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

## make bench: memory, start-up, CPU per report and idle cost, each beside its reference
bench: $(STAMP)
	$(VPY) bench/run.py

## make soak: >= 20,000 report cycles against flaky local servers; memory, fds and tasks stay flat
soak: $(STAMP)
	$(VPY) tests/faults/soak.py

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .pytest_cache .ruff_cache

## make test-debian-libs: the unit tests against Debian 12's library versions
DEBVENV := .venv-debian
$(DEBVENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(DEBVENV)
	$(DEBVENV)/bin/python -m pip install -q --upgrade pip
	$(DEBVENV)/bin/python -m pip install -q "aiohttp==3.8.4" "tenacity==8.2.1" "structlog==22.3.0" \
		"python-daemon==2.3.2" "PyYAML==6.0.1" "pytest>=7.2" "pytest-asyncio>=0.20" "hypothesis>=6.60"
	$(DEBVENV)/bin/python -m pip install -q --no-deps -e .
	touch $@

test-debian-libs: $(DEBVENV)/.installed
	$(DEBVENV)/bin/python -m pytest -q tests --ignore=tests/e2e --ignore=tests/ray

include mk/packaging.mk
include mk/ray.mk
