#!/usr/bin/env bash
# Static checks of the systemd units, no running systemd needed. For each unit:
#   - systemd-analyze security --offline: overall exposure at most its limit
#     (usagestatsd.service 2.0, usagestatsd-collector.service 1.5);
#   - systemd-analyze verify, in a scratch root holding the unit, a stand-in for its
#     program, /bin/kill and the man page named by Documentation=
#     (verify runs `man NAME(8)`, found through MANPATH);
#   - the man page renders without groff warnings.
# Usage: tests/e2e/check-unit.sh                      both units, with their man pages
#        tests/e2e/check-unit.sh UNIT MANPAGE [MAX]    one unit (MAX in tenths, default 20)
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)

for tool in systemd-analyze man; do
    command -v "$tool" >/dev/null || { echo "check-unit: $tool is missing" >&2; exit 1; }
done

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# check_one UNIT MANPAGE MAX_EXPOSURE_TENTHS
check_one() {
    local unit=$1 manpage=$2 max=$3 name prog root report warnings
    name=$(basename "$unit")
    prog=$(sed -n 's#^ExecStart=\(/[^ ]*\).*#\1#p' "$unit" | head -n1)
    root=$scratch/${name%.service}

    echo "== systemd-analyze security --offline=true $name (at most $((max / 10)).$((max % 10)))"
    # --threshold fails the command when the exposure (in tenths) is above it.
    report=$(systemd-analyze security --offline=true --threshold="$max" "$unit" 2>&1) || {
        echo "$report" | grep -E '✗|Overall' >&2
        echo "check-unit: FAIL: $name: exposure above $((max / 10)).$((max % 10))" >&2
        exit 1
    }
    echo "$report" | grep -E '✗|Overall'

    echo "== systemd-analyze verify $name"
    mkdir -p "$root/usr/bin" "$root/usr/lib/systemd" "$root/etc/systemd/system" \
        "$root/usr/share/man/man8"
    ln -s usr/bin "$root/bin"
    ln -s usr/lib "$root/lib"
    cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
    cp "$(type -P kill)" "$root/usr/bin/kill"
    printf '#!/bin/sh\nexit 0\n' >"$root$prog"
    chmod 755 "$root$prog"
    cp "$manpage" "$root/usr/share/man/man8/$(basename "$manpage")"
    cp "$unit" "$root/usr/lib/systemd/system/$name"
    # The units a unit names (usagestatsd.service: Sockets=usagestatsd-intake.socket).
    cp "$top"/systemd/*.socket "$root/usr/lib/systemd/system/"
    MANPATH=$root/usr/share/man systemd-analyze verify --root="$root" "/usr/lib/systemd/system/$name"

    echo "== man page $(basename "$manpage"): renders, no groff warnings (lintian's check)"
    grep -q '^\.SH NAME' "$manpage" || { echo "check-unit: FAIL: $manpage has no NAME section" >&2; exit 1; }
    warnings=$(LC_ALL=C.UTF-8 MANROFFSEQ='' MANWIDTH=80 man --warnings -E UTF-8 -l -Tutf8 -Z "$manpage" 2>&1 >/dev/null)
    [ -z "$warnings" ] || { echo "$warnings" >&2; echo "check-unit: FAIL: man page warnings" >&2; exit 1; }
}

if [ $# -gt 0 ]; then
    check_one "$1" "${2:?usage: check-unit.sh UNIT MANPAGE [MAX]}" "${3:-20}"
else
    check_one "$top/systemd/usagestatsd.service" "$top/docs/usagestatsd.8" 20
    check_one "$top/systemd/usagestatsd-collector.service" "$top/docs/usagestatsd-collector.8" 15
    echo "== systemd-analyze verify usagestatsd-intake.socket"
    root=$scratch/intake-socket
    mkdir -p "$root/usr/lib/systemd" "$root/usr/share/man/man8"
    cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
    cp "$top/docs/usagestatsd.8" "$root/usr/share/man/man8/"
    cp "$top"/systemd/usagestatsd.service "$top"/systemd/*.socket "$root/usr/lib/systemd/system/"
    mkdir -p "$root/usr/bin" && printf '#!/bin/sh\nexit 0\n' >"$root/usr/bin/usagestatsd"
    chmod 755 "$root/usr/bin/usagestatsd"
    MANPATH=$root/usr/share/man systemd-analyze verify --root="$root" \
        /usr/lib/systemd/system/usagestatsd-intake.socket
fi
echo "check-unit: OK"
