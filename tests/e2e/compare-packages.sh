#!/usr/bin/env bash
# The .deb and the .rpm install the same files in the same places, with the same modes and
# contents. Usage:
#   tests/e2e/compare-packages.sh [--require] [DEB] [RPM]
# (defaults: dist/usagestatsd_<version>_all.deb and dist/usagestatsd-<version>-1.noarch.rpm).
# Without the packages it prints SKIP and the reason, and exits 0 (1 with --require).
# Needs dpkg-deb, rpm and rpm2cpio, cpio (all on Debian with `apt-get install rpm cpio`).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
require=0
if [ "${1:-}" = --require ]; then require=1; shift; fi
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$top/pyproject.toml" | head -n1)
deb=${1:-$top/dist/usagestatsd_${version}_all.deb}
rpm=${2:-$top/dist/usagestatsd-${version}-1.noarch.rpm}

skip() {
    echo "compare-packages: SKIP: $*" >&2
    [ "$require" = 0 ] || { echo "compare-packages: FAIL: --require given" >&2; exit 1; }
    exit 0
}
for f in "$deb" "$rpm"; do [ -f "$f" ] || skip "$f is not built (make deb rpm)"; done
for tool in dpkg-deb rpm rpm2cpio cpio; do
    command -v "$tool" >/dev/null || skip "$tool is missing (apt-get install rpm cpio)"
done

# ---- The allowed differences, each with its reason. Paths are after normalisation:
#   @PY@      = /usr/lib/python3/dist-packages (Debian) = /usr/lib/python3.X/site-packages (RPM)
#   @UNITDIR@ = /lib/systemd/system (Debian 12, the same directory as /usr/lib/systemd/system
#               on a merged-/usr system)         = /usr/lib/systemd/system (RPM's %_unitdir)
ONLY_DEB=(
    # Debian's changelog of this native package; the RPM carries it in its header
    # (rpm -q --changelog usagestatsd).
    /usr/share/doc/usagestatsd/changelog.gz
    # Debian's machine-readable license statement; the RPM has it in its License: tag.
    /usr/share/doc/usagestatsd/copyright
    # dh_python3's hook that recompiles the bytecode when Debian's default Python changes.
    /usr/share/python3/runtime.d/usagestatsd.rtupdate
)
ONLY_RPM=(
    # %ghost: created by `usagestatsd enable/disable` (the .deb's postinst creates it at the
    # same path and its postrm removes it on purge); owned so that erasing the RPM removes it.
    /etc/usagestatsd/consent.json
    # Enables the unit through `systemctl preset` in %post (RPM distributions use presets;
    # Debian's postinst enables it with deb-systemd-helper, which ignores presets).
    /usr/lib/systemd/system-preset/80-usagestatsd.preset
)
# Present in both, contents may differ:
CONTENT_MAY_DIFFER=(
    # The wheel's install record: each installer writes its own (paths and hashes of the
    # generated files). METADATA, WHEEL, entry_points.txt and top_level.txt must match.
    @PY@/usagestatsd-${version}.dist-info/RECORD
)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
normalise() {
    sed -E -e 's#^/usr/lib/python3/dist-packages/#@PY@/#' \
        -e 's#^/usr/lib/python3\.[0-9]+/site-packages/#@PY@/#' \
        -e 's#^/lib/systemd/system/#@UNITDIR@/#' \
        -e 's#^/usr/lib/systemd/system/#@UNITDIR@/#'
}

# File lists (regular files and symlinks; directories follow from them), with modes.
dpkg-deb --fsys-tarfile "$deb" | tar -tvf - \
    | awk '$1 !~ /^d/ {p=$6; sub(/^\./, "", p); print p, $1}' | normalise | sort >"$work/deb.list"
rpm -qp --qf '[%{FILENAMES} %{FILEMODES:perms}\n]' "$rpm" | grep -v ' d' | normalise | sort >"$work/rpm.list"

failures=0
ok() { echo "compare-packages: ok   $*"; }
bad() { echo "compare-packages: FAIL $*" >&2; failures=$((failures + 1)); }
in_list() { local x=$1; shift; local y; for y in "$@"; do [ "$x" = "$y" ] && return 0; done; return 1; }

cut -d' ' -f1 "$work/deb.list" >"$work/deb.paths"
cut -d' ' -f1 "$work/rpm.list" >"$work/rpm.paths"
while read -r path; do
    if in_list "$path" "${ONLY_DEB[@]}"; then ok "only in the .deb (allowed): $path"
    else bad "only in the .deb: $path"; fi
done < <(comm -23 "$work/deb.paths" "$work/rpm.paths")
while read -r path; do
    if in_list "$path" "${ONLY_RPM[@]}"; then ok "only in the .rpm (allowed): $path"
    else bad "only in the .rpm: $path"; fi
done < <(comm -13 "$work/deb.paths" "$work/rpm.paths")
for path in "${ONLY_DEB[@]}"; do grep -qxF "$path" "$work/deb.paths" || bad "allowed .deb-only file is gone: $path (update this list)"; done
for path in "${ONLY_RPM[@]}"; do grep -qxF "$path" "$work/rpm.paths" || bad "allowed .rpm-only file is gone: $path (update this list)"; done

# Modes of the files in both.
mode_diff=$(join <(sort "$work/deb.list") <(sort "$work/rpm.list") | awk '$2 != $3')
if [ -z "$mode_diff" ]; then ok "the same modes for all $(comm -12 "$work/deb.paths" "$work/rpm.paths" | wc -l) common files"
else bad "modes differ (path deb rpm):"; echo "$mode_diff" >&2; fi

# Contents of the files in both (man pages compared uncompressed).
mkdir "$work/deb" "$work/rpm"
dpkg-deb -x "$deb" "$work/deb"
(cd "$work/rpm" && rpm2cpio "$rpm" | cpio -idm --quiet)
real_path() {  # real_path deb|rpm NORMALISED
    local side=$1 p=$2 root=$work/$1
    case "$p" in
        @PY@/*) if [ "$side" = deb ]; then echo "$root/usr/lib/python3/dist-packages/${p#@PY@/}"
                else echo "$(ls -d "$root"/usr/lib/python3.*/site-packages)/${p#@PY@/}"; fi ;;
        @UNITDIR@/*) if [ "$side" = deb ]; then echo "$root/lib/systemd/system/${p#@UNITDIR@/}"
                     else echo "$root/usr/lib/systemd/system/${p#@UNITDIR@/}"; fi ;;
        *) echo "$root$p" ;;
    esac
}
same=0
while read -r path; do
    a=$(real_path deb "$path") b=$(real_path rpm "$path")
    if [[ "$path" == *.gz ]]; then cmp -s <(gzip -dc "$a") <(gzip -dc "$b"); else cmp -s "$a" "$b"; fi \
        && same_content=1 || same_content=0
    if [ "$same_content" = 1 ]; then same=$((same + 1))
    elif in_list "$path" "${CONTENT_MAY_DIFFER[@]}"; then ok "contents differ (allowed): $path"
    else bad "contents differ: $path"; diff <(cat "$a") <(cat "$b") | head -5 >&2 || true; fi
done < <(comm -12 "$work/deb.paths" "$work/rpm.paths")
ok "identical contents: $same files"

if [ "$failures" -eq 0 ]; then
    echo "compare-packages: PASS ($(wc -l <"$work/deb.paths") files in the .deb, $(wc -l <"$work/rpm.paths") in the .rpm)"
else
    echo "compare-packages: FAIL ($failures differences)" >&2
    exit 1
fi
