#!/usr/bin/env bash
# Build usagestatsd_<version>_all.deb and usagestatsd-collector_<version>_all.deb (and their
# native source package) with Debian's own tooling from packaging/debian/, then check them
# with lintian (no errors, no warnings).
#   packaging/build-deb.sh [OUTDIR]      (default: dist/ in the checkout)
# Installs the build dependencies with apt when they are missing (needs root then).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out=$(realpath -m "${1:-$top/dist}")
say() { printf 'build-deb: %s\n' "$*" >&2; }

# pybuild, dpkg-buildpackage and lintian must see Debian's python3, not a pyenv build.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV PYENV_VERSION

# build-essential: dpkg-checkbuilddeps requires it of every package, even an
# architecture-independent one ("Unmet build dependencies: build-essential:native").
BUILD_DEPS=(build-essential debhelper dh-python pybuild-plugin-pyproject python3-all
    python3-setuptools lintian po-debconf dpkg-dev)
missing=()
for pkg in "${BUILD_DEPS[@]}"; do
    dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null | grep -qx installed || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing build dependencies: ${missing[*]}"
    [ "$(id -u)" = 0 ] || { say "not root: install them first: apt-get install ${missing[*]}"; exit 1; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

version=$(dpkg-parsechangelog -l "$top/packaging/debian/changelog" -S Version)
upstream=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$top/pyproject.toml" | head -n1)
[ "$version" = "$upstream" ] || { say "debian/changelog says $version, pyproject.toml $upstream"; exit 1; }

work=$top/build/deb
src=$work/usagestatsd-$version
rm -rf "$work"
mkdir -p "$src/packaging" "$out"
# The upstream tree the package is built from: exactly what it needs, no caches.
tar -C "$top" --exclude=__pycache__ --exclude='*.pyc' -cf - \
    pyproject.toml README.md usagestatsd systemd docs packaging/usagestatsd.toml \
    | tar -C "$src" -xf -
cp -r "$top/packaging/debian" "$src/debian"
# The translation template must match the debconf templates (lintian checks it exists).
(cd "$src" && debconf-updatepo)
if ! diff -q <(grep -v '^"POT-Creation-Date' "$top/packaging/debian/po/templates.pot") \
    <(grep -v '^"POT-Creation-Date' "$src/debian/po/templates.pot") >/dev/null; then
    say "FAIL: packaging/debian/po/templates.pot is stale: run debconf-updatepo in a tree whose"
    say "debian/ is packaging/debian (or copy $src/debian/po/templates.pot over it)"
    exit 1
fi
cp "$top/packaging/debian/po/templates.pot" "$src/debian/po/templates.pot"
# A reproducible build: the files' times are the changelog's.
export SOURCE_DATE_EPOCH
SOURCE_DATE_EPOCH=$(dpkg-parsechangelog -l "$src/debian/changelog" -S Timestamp)

say "dpkg-buildpackage in $src"
(cd "$src" && dpkg-buildpackage -us -uc >"$work/build.log" 2>&1) || {
    tail -40 "$work/build.log" >&2
    say "FAIL: dpkg-buildpackage (log: $work/build.log)"
    exit 1
}
arch=$(dpkg --print-architecture)
changes=$work/usagestatsd_${version}_${arch}.changes
deb=$work/usagestatsd_${version}_all.deb
collector_deb=$work/usagestatsd-collector_${version}_all.deb
for f in "$deb" "$collector_deb" "$changes"; do
    [ -f "$f" ] || { say "FAIL: no $f"; exit 1; }
done
# One source tree, two binary packages: the daemon's must not carry the collector.
if dpkg-deb -c "$deb" | grep -E '/usagestatsd/collector/|usagestatsd-collector' >&2; then
    say "FAIL: $(basename "$deb") holds collector files (above)"
    exit 1
fi
# The demo is the checkout's (make run) and the tests': no package ships it.
if dpkg-deb -c "$deb" | grep -E '/usagestatsd/demo/' >&2; then
    say "FAIL: $(basename "$deb") holds the demo (above)"
    exit 1
fi

say "lintian --fail-on error,warning $(basename "$deb") $(basename "$collector_deb") $(basename "$changes")"
# --pedantic would add style opinions; errors and warnings are what must be clean.
lintian --fail-on error,warning --display-info --tag-display-limit 0 "$deb" | tee "$work/lintian-deb.log" >&2
lintian --fail-on error,warning --display-info --tag-display-limit 0 "$collector_deb" \
    | tee "$work/lintian-collector-deb.log" >&2
lintian --fail-on error,warning --display-info --tag-display-limit 0 "$changes" | tee "$work/lintian-changes.log" >&2

for f in "$deb" "$collector_deb" "$changes" "$work"/usagestatsd_"$version".dsc "$work"/usagestatsd_"$version".tar.* \
    "$work"/usagestatsd_"${version}"_"$arch".buildinfo; do
    cp "$f" "$out/"
done
say "built $out/$(basename "$deb") and $out/$(basename "$collector_deb")"
dpkg-deb --info "$deb" | sed -n '/Package:/,$p' >&2
dpkg-deb --info "$collector_deb" | sed -n '/Package:/,/^ Description/p' >&2
