# make test-ray: the real-Ray suite (tests/ray, docs/real-ray.md) against ray[default] in
# its own cached virtualenv. Included by the Makefile (`include mk/ray.mk`); uses its
# $(STAMP) and $(VPY). If Ray cannot be installed the target fails: it never passes empty.
RAY_VERSION ?= 2.60.0
RAY_VENV ?= /var/cache/usagestatsd-ray/venv
RAY_BASE_PYTHON ?= /usr/bin/python3
RAY_PY := $(RAY_VENV)/bin/python

.PHONY: test-ray ray-venv

ray-venv:
	@set -e; \
	if $(RAY_PY) -c 'import sys, ray; sys.exit(ray.__version__ != "$(RAY_VERSION)")' 2>/dev/null; then \
		echo "test-ray: using Ray $(RAY_VERSION) from $(RAY_VENV)"; \
	else \
		echo "test-ray: installing ray[default]==$(RAY_VERSION) into $(RAY_VENV)"; \
		mkdir -p "$(dir $(RAY_VENV))"; \
		if ! { [ -x "$(RAY_PY)" ] || $(RAY_BASE_PYTHON) -m venv "$(RAY_VENV)"; } \
			|| ! $(RAY_PY) -m pip install -q "ray[default]==$(RAY_VERSION)" \
			|| ! $(RAY_PY) -c 'import ray, ray.dashboard, ray.job_submission'; then \
			echo "test-ray: FAILED to install ray[default]==$(RAY_VERSION) into $(RAY_VENV);" \
				"the real-Ray suite cannot run" >&2; \
			exit 1; \
		fi; \
	fi

## make test-ray: the real-Ray suite against a real Ray head (ray[default] 2.60.0 by default, its own cached venv)
test-ray: $(STAMP) ray-venv
	RAY_PYTHON=$(RAY_PY) $(VPY) -m pytest -q tests/ray
