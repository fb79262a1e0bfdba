#!/usr/bin/env bash
# Build usagestatsd-<version>-1.noarch.rpm and its subpackage
# usagestatsd-collector-<version>-1.noarch.rpm with rpmbuild from packaging/rpm/usagestatsd.spec,
# then show `rpm -qp --requires` and run rpmlint when it is installed.
#   packaging/build-rpm.sh [OUTDIR]      (default: dist/ in the checkout)
# On Debian, installs rpm and the Python build tools with apt when missing (needs root then).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out=$(realpath -m "${1:-$top/dist}")
spec=$top/packaging/rpm/usagestatsd.spec
say() { printf 'build-rpm: %s\n' "$*" >&2; }

export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV PYENV_VERSION

if command -v dpkg-query >/dev/null; then
    missing=()
    for pkg in rpm rpmlint cpio python3-build python3-installer python3-setuptools python3-wheel; do
        dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null | grep -qx installed || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing: ${missing[*]}"
        [ "$(id -u)" = 0 ] || { say "not root: install them first: apt-get install ${missing[*]}"; exit 1; }
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
fi
command -v rpmbuild >/dev/null || { say "rpmbuild is missing"; exit 1; }

version=$(rpmspec -q --srpm --qf '%{version}' "$spec" 2>/dev/null || sed -n 's/^Version: *//p' "$spec")
upstream=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$top/pyproject.toml" | head -n1)
[ "$version" = "$upstream" ] || { say "the spec says $version, pyproject.toml $upstream"; exit 1; }

work=$top/build/rpm
rm -rf "$work"
mkdir -p "$work/SOURCES" "$work/stage/usagestatsd-$version" "$out"
# The same upstream tree as the .deb is built from.
tar -C "$top" --exclude=__pycache__ --exclude='*.pyc' -cf - \
    pyproject.toml README.md usagestatsd systemd docs packaging/usagestatsd.toml \
    | tar -C "$work/stage/usagestatsd-$version" -xf -
tar -C "$work/stage" --owner=0 --group=0 -czf "$work/SOURCES/usagestatsd-$version.tar.gz" "usagestatsd-$version"

say "rpmbuild -bb $(basename "$spec")"
# --nodeps: the BuildRequires name RPM packages; on Debian their equivalents come from apt.
rpmbuild -bb --nodeps --define "_topdir $work" "$spec" >"$work/build.log" 2>&1 || {
    tail -40 "$work/build.log" >&2
    say "FAIL: rpmbuild (log: $work/build.log)"
    exit 1
}
rpm=$work/RPMS/noarch/usagestatsd-$version-1.noarch.rpm
collector_rpm=$work/RPMS/noarch/usagestatsd-collector-$version-1.noarch.rpm
for f in "$rpm" "$collector_rpm"; do
    [ -f "$f" ] || { say "FAIL: no $f"; exit 1; }
done
# One source tree, two binary packages: the daemon's must not carry the collector.
if rpm -qp -l "$rpm" | grep -E '/usagestatsd/collector/|usagestatsd-collector' >&2; then
    say "FAIL: $(basename "$rpm") holds collector files (above)"
    exit 1
fi
# The demo is the checkout's (make run) and the tests': no package ships it.
if rpm -qp -l "$rpm" "$collector_rpm" | grep -E '/usagestatsd/demo/' >&2; then
    say "FAIL: a package holds the demo (above)"
    exit 1
fi
cp "$rpm" "$collector_rpm" "$out/"

for r in "$rpm" "$collector_rpm"; do
    echo "==== $(basename "$r")"
    echo "== rpm -qp --info"; rpm -qp --info "$r"
    echo "== rpm -qp --requires"; rpm -qp --requires "$r"
    echo "== rpm -qp --provides"; rpm -qp --provides "$r"
    echo "== rpm -qp --scripts"; rpm -qp --scripts "$r"
    echo "== rpm -qp -l"; rpm -qp -l "$r"
    echo "== rpm -qp --configfiles"; rpm -qp --configfiles "$r"
done >"$work/rpm-query.log" 2>&1
awk '/^==== /{print} /^== rpm -qp --requires/{on=1} /^== rpm -qp --provides/{on=0} on' \
    "$work/rpm-query.log" >&2
if command -v rpmlint >/dev/null; then
    say "rpmlint $(basename "$rpm") $(basename "$collector_rpm") $(basename "$spec")"
    rpmlint -c "$top/packaging/rpm/rpmlint.toml" "$rpm" "$collector_rpm" "$spec" 2>&1 \
        | tee "$work/rpmlint.log" >&2 || {
        say "FAIL: rpmlint reports errors (log: $work/rpmlint.log)"
        exit 1
    }
    grep -q ' 0 errors, 0 warnings' "$work/rpmlint.log" || {
        say "FAIL: rpmlint reports warnings (log: $work/rpmlint.log)"
        exit 1
    }
else
    say "rpmlint is not installed (apt-get install rpmlint): skipped"
fi
say "built $out/$(basename "$rpm") and $out/$(basename "$collector_rpm") (queries: $work/rpm-query.log)"
