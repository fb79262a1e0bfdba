# usagestatsd-collector: test and bench targets (included from the Makefile).
.PHONY: collector-deps test-collector bench-collector collector-screenshots

## collector-deps: Debian's postgresql (for initdb/pg_ctl; the "main" cluster the package
## creates is dropped again: the tests run their own throwaway cluster) and headless
## chromium, installed with apt when missing. Without apt (or offline) the tests that need
## them skip loudly, naming what is missing.
collector-deps:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		echo "make: installing$$missing for the collector's tests"; \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
				--no-install-recommends $$missing >/dev/null) \
			|| echo "make: WARNING: could not install$$missing; those tests will be skipped"; \
			case "$$missing" in *postgresql*) \
				for v in $$(ls /etc/postgresql 2>/dev/null); do \
					pg_dropcluster --stop "$$v" main >/dev/null 2>&1 || true; done;; esac; \
		else echo "make: WARNING: cannot install$$missing (not root or no apt-get)"; fi; \
	fi

## make test-collector: only the collector's tests (PostgreSQL and chromium included)
test-collector: $(STAMP) collector-deps
	$(VPY) -m pytest -q tests/collector

## make bench-collector: ingest rate, latency, page render and deletion with 1,000,000
## reports; the ingest rate as a ratio to a bare aiohttp handler (alternated); then the
## guard's worst case and an honest sender's latency under hostile ones
bench-collector: $(STAMP) collector-deps
	$(VPY) bench/collector.py
	$(VPY) bench/collector_ratio.py
	$(VPY) bench/collector_hostile.py

## make collector-screenshots: docs/collector-*.png from a demo fleet
collector-screenshots: $(STAMP) collector-deps
	$(VPY) bench/collector_screens.py
