# usagestatsd: every target installs what it needs into .venv by itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help run run-collector test test-slow lint typecheck unit venv clean bench soak test-ray test-debian-libs test-ray-matrix test-ray-ci

## make help: list the targets, one line each
help:
	@grep -hE '^## make [a-z0-9-]+:' $(MAKEFILE_LIST) | sed -E 's/^## make ([a-z0-9-]+): */\1\t/' \
		| awk -F '\t' '{ printf "  make %-18s %s\n", $$1, $$2 }'

# Debian's python3 has no venv/ensurepip without python3-venv: install it as root (or via
# sudo), else say exactly what to run. Nothing else here needs root.
define need_venv
	@if ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then \
		apt="apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv"; \
		if [ "$$(id -u)" = 0 ]; then \
			echo "make: $(PYTHON) lacks venv/ensurepip; installing python3-venv with apt"; \
			sh -c "$$apt"; \
		elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then \
			echo "make: $(PYTHON) lacks venv/ensurepip; installing python3-venv with sudo apt-get"; \
			sudo sh -c "$$apt"; \
		else \
			echo "make: $(PYTHON) lacks venv/ensurepip (Debian: package python3-venv)." >&2; \
			echo "make: installing it needs root; run:  sudo apt-get install python3-venv" >&2; \
			echo "make: (or as root: apt-get install python3-venv), then run make again." >&2; \
			exit 1; \
		fi; \
	fi
endef

$(STAMP): pyproject.toml
	$(need_venv)
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

## make venv: build .venv with the project and its development tools (the other targets do it too)
venv: $(STAMP)

## make run: a demo Ray session and a local receiver on 127.0.0.1; reports flow every few seconds. Ctrl-C stops.
run: $(STAMP)
	$(VENV)/bin/usagestatsd demo

## make run-collector: the demo session, the daemon reporting into a usagestatsd-collector, the fleet page at a printed 127.0.0.1 URL. Ctrl-C stops.
run-collector: $(STAMP)
	$(VPY) tools/run_collector.py

## make test: ruff, ruff format --check, mypy --strict, pytest (every suite but Ray's and the containers', without the slow tests)
test: lint typecheck unit

## make lint: ruff check and ruff format --check
lint: $(STAMP)
	$(VENV)/bin/ruff check usagestatsd tests bench tools
	$(VENV)/bin/ruff format --check usagestatsd tests bench tools

## make typecheck: mypy --strict
typecheck: $(STAMP)
	$(VENV)/bin/mypy

# Every suite that needs neither Ray nor a container (unit, process, faults, provider,
# collector); a new real-Ray test file in tests/ray must be added to these --ignore options.
# `make test` runs the tests not marked slow (a few minutes on 2 cores); `make test-slow`
# runs the long fault and attack runs marked @pytest.mark.slow. CI runs both.
UNIT_TESTS := tests --ignore=tests/e2e \
	--ignore=tests/ray/test_real_ray.py --ignore=tests/ray/test_setup_real.py

## make unit: pytest only, without the slow tests (one test: .venv/bin/python -m pytest -q tests/FILE.py::NAME)
unit: $(STAMP) collector-deps
	$(VPY) -m pytest -q -m "not slow" $(UNIT_TESTS)

## make test-slow: the tests marked slow (long fault, crash and attack runs); CI runs it after make test
test-slow: $(STAMP) collector-deps
	$(VPY) -m pytest -q -m slow $(UNIT_TESTS)

## make bench: memory, start-up, CPU per report and idle cost, each beside its reference
bench: $(STAMP)
	$(VPY) -m bench

## make soak: >= 20,000 report cycles against flaky local servers; memory, fds and tasks stay flat
soak: $(STAMP)
	$(VPY) tests/faults/soak.py

## make clean: remove the virtual environments, builds and caches
clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .pytest_cache .ruff_cache

## make test-debian-libs: the tests of make test and make test-slow against Debian 12's library versions
DEBVENV := .venv-debian
$(DEBVENV)/.installed: pyproject.toml
	$(need_venv)
	$(PYTHON) -m venv $(DEBVENV)
	$(DEBVENV)/bin/python -m pip install -q --upgrade pip
	$(DEBVENV)/bin/python -m pip install -q "aiohttp==3.8.4" "tenacity==8.2.1" "structlog==22.3.0" \
		"python-daemon==2.3.2" "PyYAML==6.0.1" "pytest>=7.2" "pytest-asyncio>=0.20" "hypothesis>=6.60" \
		"psycopg[binary]>=3.1,<3.2"
	$(DEBVENV)/bin/python -m pip install -q --no-deps -e .
	touch $@

test-debian-libs: $(DEBVENV)/.installed collector-deps
	$(DEBVENV)/bin/python -m pytest -q $(UNIT_TESTS)

include mk/packaging.mk
include mk/collector.mk
include mk/ray.mk
