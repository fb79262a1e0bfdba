# Packages and their end-to-end proof. Included by the Makefile: include mk/packaging.mk
#   make deb               dist/usagestatsd_<version>_all.deb (dpkg-buildpackage; lintian clean)
#   make rpm               dist/usagestatsd-<version>-1.noarch.rpm (rpmbuild; rpmlint clean)
#   make compare-packages  the two install the same files in the same places
#   make e2e               all of the above, then both packages under real systemd (root; < 10 min)
#   make e2e-journey       the .deb, a real Ray 2.60 and `usagestatsd setup` under real systemd:
#                          install -> setup -> first report -> every opt-out (root; ~5 min)
#   make newcomer          the README's `make test` and `make run` in a fresh Debian 12 container,
#                          from a `git clone` of HEAD, as root and as an unprivileged user; as
#                          root also `make deb` and `make rpm` (root)
# Build dependencies are installed with apt when missing. See docs/packaging.md.

# Including this file must not change the Makefile's default goal.
_packaging_default_goal := $(.DEFAULT_GOAL)

.PHONY: deb rpm compare-packages e2e e2e-journey newcomer

## make deb: dist/usagestatsd_<version>_all.deb (dpkg-buildpackage, lintian; root for apt)
deb:
	packaging/build-deb.sh dist

## make rpm: dist/usagestatsd-<version>-1.noarch.rpm (rpmbuild, rpmlint; root for apt)
rpm:
	packaging/build-rpm.sh dist

## make compare-packages: the .deb and the .rpm install the same files in the same places
compare-packages:
	tests/e2e/compare-packages.sh --require

## make e2e: both packages under real systemd in a Debian 12 container (root; < 10 min)
e2e:
	tests/e2e/run.sh

## make e2e-journey: an operator's path with a real Ray 2.60 under real systemd: install, setup, first report, every opt-out (root; ~4 min)
# The Ray venv it copies into the container (make test-ray RAY_VENV=... builds one).
RAY_VENV_JOURNEY ?= /var/cache/usagestatsd-ray/2.60.0/venv
e2e-journey: deb
	RAY_VENV=$(RAY_VENV_JOURNEY) tests/e2e/journey.sh

## make newcomer: a fresh Debian 12 container, `git clone` of HEAD, the README's make test and make run, as root and as a user; make deb and make rpm as root
newcomer:
	tests/e2e/newcomer.sh

.DEFAULT_GOAL := $(_packaging_default_goal)
