#!/usr/bin/env bash
# The .deb and the .rpm install the same files in the same places, with the same modes and
# contents, for each of the two binary packages (usagestatsd and usagestatsd-collector);
# neither daemon package holds a collector file, and the two packages of a format share no
# file. Usage:
#   tests/e2e/compare-packages.sh [--require] [DEB RPM [COLLECTOR_DEB COLLECTOR_RPM]]
# (defaults: dist/usagestatsd_<version>_all.deb, dist/usagestatsd-<version>-1.noarch.rpm,
#  dist/usagestatsd-collector_<version>_all.deb, dist/usagestatsd-collector-<version>-1.noarch.rpm).
# Without the packages it prints SKIP and the reason, and exits 0 (1 with --require).
# Needs dpkg-deb, rpm and rpm2cpio, cpio (all on Debian with `apt-get install rpm cpio`).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
require=0
if [ "${1:-}" = --require ]; then require=1; shift; fi
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$top/pyproject.toml" | head -n1)
deb=${1:-$top/dist/usagestatsd_${version}_all.deb}
rpm=${2:-$top/dist/usagestatsd-${version}-1.noarch.rpm}
cdeb=${3:-$(dirname "$deb")/usagestatsd-collector_${version}_all.deb}
crpm=${4:-$(dirname "$rpm")/usagestatsd-collector-${version}-1.noarch.rpm}

skip() {
    echo "compare-packages: SKIP: $*" >&2
    [ "$require" = 0 ] || { echo "compare-packages: FAIL: --require given" >&2; exit 1; }
    exit 0
}
for f in "$deb" "$rpm" "$cdeb" "$crpm"; do [ -f "$f" ] || skip "$f is not built (make deb rpm)"; done
for tool in dpkg-deb rpm rpm2cpio cpio; do
    command -v "$tool" >/dev/null || skip "$tool is missing (apt-get install rpm cpio)"
done

# ---- The allowed differences, each with its reason. Paths are after normalisation:
#   @PY@      = /usr/lib/python3/dist-packages (Debian) = /usr/lib/python3.X/site-packages (RPM)
#   @UNITDIR@ = /lib/systemd/system (Debian 12, the same directory as /usr/lib/systemd/system
#               on a merged-/usr system)         = /usr/lib/systemd/system (RPM's %_unitdir)
# The daemon, usagestatsd:
ONLY_DEB_usagestatsd=(
    # Debian's changelog of this native package; the RPM carries it in its header
    # (rpm -q --changelog usagestatsd).
    /usr/share/doc/usagestatsd/changelog.gz
    # Debian's machine-readable license statement; the RPM has it in its License: tag.
    /usr/share/doc/usagestatsd/copyright
    # dh_python3's hook that recompiles the bytecode when Debian's default Python changes.
    /usr/share/python3/runtime.d/usagestatsd.rtupdate
)
ONLY_RPM_usagestatsd=(
    # %ghost: created by `usagestatsd enable/disable` (the .deb's postinst creates it at the
    # same path and its postrm removes it on purge); owned so that erasing the RPM removes it.
    /etc/usagestatsd/consent.json
    # Enables the unit through `systemctl preset` in %post (RPM distributions use presets;
    # Debian's postinst enables it with deb-systemd-helper, which ignores presets).
    /usr/lib/systemd/system-preset/80-usagestatsd.preset
)
CONTENT_MAY_DIFFER_usagestatsd=(
    # The wheel's install record: each installer writes its own (paths and hashes of the
    # generated files). METADATA, WHEEL, entry_points.txt and top_level.txt must match.
    @PY@/usagestatsd-${version}.dist-info/RECORD
)
# The collector, usagestatsd-collector (the same reasons as the daemon's):
ONLY_DEB_collector=(
    /usr/share/doc/usagestatsd-collector/changelog.gz
    /usr/share/doc/usagestatsd-collector/copyright
)
ONLY_RPM_collector=(
    /usr/lib/systemd/system-preset/80-usagestatsd-collector.preset
)
CONTENT_MAY_DIFFER_collector=()

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
normalise() {
    sed -E -e 's#^/usr/lib/python3/dist-packages/#@PY@/#' \
        -e 's#^/usr/lib/python3\.[0-9]+/site-packages/#@PY@/#' \
        -e 's#^/lib/systemd/system/#@UNITDIR@/#' \
        -e 's#^/usr/lib/systemd/system/#@UNITDIR@/#'
}
# list_deb DEB / list_rpm RPM: regular files and symlinks (directories follow from them),
# normalised, with modes.
list_deb() {
    dpkg-deb --fsys-tarfile "$1" | tar -tvf - \
        | awk '$1 !~ /^d/ {p=$6; sub(/^\./, "", p); print p, $1}' | normalise | sort
}
list_rpm() { rpm -qp --qf '[%{FILENAMES} %{FILEMODES:perms}\n]' "$1" | grep -v ' d' | normalise | sort; }

failures=0
ok() { echo "compare-packages: ok   $*"; }
bad() { echo "compare-packages: FAIL $*" >&2; failures=$((failures + 1)); }
in_list() { local x=$1; shift; local y; for y in "$@"; do [ "$x" = "$y" ] && return 0; done; return 1; }

# compare NAME DEB RPM: NAME selects the allowed differences above.
compare() {
    local name=$1 d=$2 r=$3 w=$work/$1 path mode_diff same a b same_content
    local -n only_deb=ONLY_DEB_$name only_rpm=ONLY_RPM_$name may_differ=CONTENT_MAY_DIFFER_$name
    echo "compare-packages: == $(basename "$d") and $(basename "$r")"
    mkdir -p "$w/deb" "$w/rpm"
    list_deb "$d" >"$w/deb.list"
    list_rpm "$r" >"$w/rpm.list"
    cut -d' ' -f1 "$w/deb.list" >"$w/deb.paths"
    cut -d' ' -f1 "$w/rpm.list" >"$w/rpm.paths"
    while read -r path; do
        if in_list "$path" "${only_deb[@]}"; then ok "only in the .deb (allowed): $path"
        else bad "only in the .deb: $path"; fi
    done < <(comm -23 "$w/deb.paths" "$w/rpm.paths")
    while read -r path; do
        if in_list "$path" "${only_rpm[@]}"; then ok "only in the .rpm (allowed): $path"
        else bad "only in the .rpm: $path"; fi
    done < <(comm -13 "$w/deb.paths" "$w/rpm.paths")
    for path in "${only_deb[@]}"; do grep -qxF "$path" "$w/deb.paths" || bad "allowed .deb-only file is gone: $path (update this list)"; done
    for path in "${only_rpm[@]}"; do grep -qxF "$path" "$w/rpm.paths" || bad "allowed .rpm-only file is gone: $path (update this list)"; done

    # Modes of the files in both.
    mode_diff=$(join <(sort "$w/deb.list") <(sort "$w/rpm.list") | awk '$2 != $3')
    if [ -z "$mode_diff" ]; then ok "the same modes for all $(comm -12 "$w/deb.paths" "$w/rpm.paths" | wc -l) common files"
    else bad "modes differ (path deb rpm):"; echo "$mode_diff" >&2; fi

    # Contents of the files in both (man pages compared uncompressed).
    dpkg-deb -x "$d" "$w/deb"
    (cd "$w/rpm" && rpm2cpio "$r" | cpio -idm --quiet)
    same=0
    while read -r path; do
        a=$(real_path "$w" deb "$path") b=$(real_path "$w" rpm "$path")
        if [[ "$path" == *.gz ]]; then cmp -s <(gzip -dc "$a") <(gzip -dc "$b"); else cmp -s "$a" "$b"; fi \
            && same_content=1 || same_content=0
        if [ "$same_content" = 1 ]; then same=$((same + 1))
        elif in_list "$path" "${may_differ[@]}"; then ok "contents differ (allowed): $path"
        else bad "contents differ: $path"; diff <(cat "$a") <(cat "$b") | head -5 >&2 || true; fi
    done < <(comm -12 "$w/deb.paths" "$w/rpm.paths")
    ok "identical contents: $same files"
}
real_path() {  # real_path WORK deb|rpm NORMALISED
    local side=$2 p=$3 root=$1/$2
    case "$p" in
        @PY@/*) if [ "$side" = deb ]; then echo "$root/usr/lib/python3/dist-packages/${p#@PY@/}"
                else echo "$(ls -d "$root"/usr/lib/python3.*/site-packages)/${p#@PY@/}"; fi ;;
        @UNITDIR@/*) if [ "$side" = deb ]; then echo "$root/lib/systemd/system/${p#@UNITDIR@/}"
                     else echo "$root/usr/lib/systemd/system/${p#@UNITDIR@/}"; fi ;;
        *) echo "$root$p" ;;
    esac
}

compare usagestatsd "$deb" "$rpm"
compare collector "$cdeb" "$crpm"

# One Python source tree, two binary packages: the split is clean in both formats.
echo "compare-packages: == the split"
for fmt in deb rpm; do
    held=$(grep -E '^@PY@/usagestatsd/collector/|usagestatsd-collector' "$work/usagestatsd/$fmt.paths" || true)
    if [ -z "$held" ]; then ok "the daemon's .$fmt holds no collector file"
    else bad "the daemon's .$fmt holds collector files:"; echo "$held" >&2; fi
    shared=$(comm -12 "$work/usagestatsd/$fmt.paths" "$work/collector/$fmt.paths")
    if [ -z "$shared" ]; then ok "the two .$fmt packages share no file"
    else bad "files in both .$fmt packages:"; echo "$shared" >&2; fi
    grep -q '^@PY@/usagestatsd/collector/' "$work/collector/$fmt.paths" \
        && ok "the collector's .$fmt holds usagestatsd/collector/" \
        || bad "the collector's .$fmt lacks usagestatsd/collector/"
done

if [ "$failures" -eq 0 ]; then
    echo "compare-packages: PASS (usagestatsd: $(wc -l <"$work/usagestatsd/deb.paths") files in the .deb," \
        "$(wc -l <"$work/usagestatsd/rpm.paths") in the .rpm; usagestatsd-collector:" \
        "$(wc -l <"$work/collector/deb.paths") and $(wc -l <"$work/collector/rpm.paths"))"
else
    echo "compare-packages: FAIL ($failures differences)" >&2
    exit 1
fi
