# make test-ray: the real-Ray suite (tests/ray, docs/real-ray.md) against ray[default] in
# its own cached virtualenv, one per version. Included by the Makefile (`include mk/ray.mk`);
# uses its $(STAMP) and $(VPY). If Ray cannot be installed the target fails: it never
# passes empty. A Ray before 2.9 on a machine without Python 3.10 is skipped, and says so.
#
#   make test-ray RAY_VERSION=2.40.0   one version (default: the newest, 2.60.0)
#   make test-ray-matrix               every version of RAY_RUN (default: RAY_MATRIX), one at a
#                                      time; writes the table of RAY_MATRIX (each version's
#                                      latest result, tests/ray/matrix-results.json; "not run"
#                                      for a version never run) into docs/real-ray.md, README.md
#                                      (RAY_RUN="2.0.1 2.52.1": those only; RAY_RUN=: the
#                                      table only, from the kept results)
#   make test-ray-ci                   one head per era that passes reliably (for .ci/run)
#   make record-ray RAY_VERSION=X      record X's replies into tests/data/ray-X/
RAY_VERSION ?= 2.60.0
RAY_MATRIX ?= 1.13.0 2.0.1 2.2.0 2.5.1 2.8.1 2.9.3 2.20.0 2.30.0 2.40.0 2.44.1 2.47.1 2.52.1 2.60.0
RAY_RUN ?= $(RAY_MATRIX)
RAY_CI_VERSIONS ?= 1.13.0 2.5.1 2.9.3 2.60.0
RAY_VENV ?= /var/cache/usagestatsd-ray/$(RAY_VERSION)/venv
# Ray before 2.9 runs on Python 3.10 (before 2.3 there are no wheels for 3.11) with the
# pydantic and protobuf of its time: with today's, Ray itself fails to start.
RAY_BEFORE_2_9 := $(shell echo "$(RAY_VERSION)" | awk -F. '$$1 < 2 || ($$1 == 2 && $$2 < 9) {print "yes"}')
# Looked for where pyenv keeps its builds (also when pyenv is not on PATH, as under env -i),
# then on PATH.
RAY_PYENV_ROOTS := $(shell pyenv root 2>/dev/null) $(PYENV_ROOT) $(HOME)/.pyenv
RAY_OLD_PYTHON ?= $(firstword $(wildcard $(addsuffix /versions/3.10.*/bin/python,$(RAY_PYENV_ROOTS))) $(shell command -v python3.10 2>/dev/null))
RAY_BASE_PYTHON ?= $(if $(RAY_BEFORE_2_9),$(RAY_OLD_PYTHON),/usr/bin/python3)
RAY_PINS := $(if $(RAY_BEFORE_2_9),"pydantic<2" "protobuf<4.26")
RAY_PY := $(RAY_VENV)/bin/python

.PHONY: test-ray ray-venv test-ray-matrix test-ray-ci record-ray

ifeq ($(RAY_BASE_PYTHON),)
# No Python 3.10 on this machine: the suite of a Ray before 2.9 cannot run. `make test-ray`
# says so and passes; the matrix keeps it as skipped, never as passed.
RAY_SKIPPED := Ray $(RAY_VERSION) needs Python 3.10, and none was found (pyenv root, PYENV_ROOT, ~/.pyenv, PATH)

ray-venv:
	@echo "test-ray: $(RAY_SKIPPED): no venv" >&2; exit 1

test-ray:
	@echo "test-ray: SKIPPED: $(RAY_SKIPPED)" >&2
	@if [ -n "$$USAGESTATSD_MATRIX_OUT" ]; then \
		printf '{"skipped": "%s"}\n' "$(RAY_SKIPPED)" > "$$USAGESTATSD_MATRIX_OUT"; fi
else
ray-venv:
	@set -e; \
	if $(RAY_PY) -c 'import sys, ray; sys.exit(ray.__version__ != "$(RAY_VERSION)")' 2>/dev/null; then \
		echo "test-ray: using Ray $(RAY_VERSION) from $(RAY_VENV)"; \
	else \
		echo "test-ray: installing ray[default]==$(RAY_VERSION) into $(RAY_VENV)"; \
		mkdir -p "$(dir $(RAY_VENV))"; \
		if ! { [ -x "$(RAY_PY)" ] || $(RAY_BASE_PYTHON) -m venv "$(RAY_VENV)"; } \
			|| ! $(RAY_PY) -m pip install -q "ray[default]==$(RAY_VERSION)" $(RAY_PINS) \
			|| ! $(RAY_PY) -c 'import ray, ray.dashboard, ray.job_submission'; then \
			echo "test-ray: FAILED to install ray[default]==$(RAY_VERSION) into $(RAY_VENV);" \
				"the real-Ray suite cannot run" >&2; \
			exit 1; \
		fi; \
	fi

## make test-ray: the real-Ray suite against a real Ray head (ray[default] 2.60.0 by default, its own cached venv)
test-ray: $(STAMP) ray-venv
	RAY_PYTHON=$(RAY_PY) $(VPY) -m pytest -q tests/ray

endif

# Each version in turn (never in parallel: the machine's cores are shared), timed.
test-ray-matrix: $(STAMP)
	$(VPY) -m tests.ray.matrix --write-docs --matrix "$(RAY_MATRIX)" $(RAY_RUN)

test-ray-ci: $(STAMP)
	$(VPY) -m tests.ray.matrix $(RAY_CI_VERSIONS)

record-ray: $(STAMP) ray-venv
	RAY_PYTHON=$(RAY_PY) $(VPY) -m tests.ray.record
