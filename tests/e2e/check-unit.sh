#!/usr/bin/env bash
# Static checks of the systemd unit, no running systemd needed:
#   - systemd-analyze security --offline: overall exposure must be 2.0 or less;
#   - systemd-analyze verify, in a scratch root holding the unit, a stand-in
#     /usr/bin/usagestatsd, /bin/kill and the man page named by Documentation=
#     (verify runs `man usagestatsd(8)`, found through MANPATH);
#   - the man page renders without groff warnings.
# Usage: tests/e2e/check-unit.sh [UNIT] [MANPAGE]
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
unit=${1:-$top/systemd/usagestatsd.service}
manpage=${2:-$top/docs/usagestatsd.8}
MAX_EXPOSURE=20  # tenths: 2.0

for tool in systemd-analyze man; do
    command -v "$tool" >/dev/null || { echo "check-unit: $tool is missing" >&2; exit 1; }
done

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

echo "== systemd-analyze security --offline=true $(basename "$unit")"
# --threshold fails the command when the exposure (in tenths) is above it.
report=$(systemd-analyze security --offline=true --threshold=$MAX_EXPOSURE "$unit" 2>&1) || {
    echo "$report" | grep -E '✗|Overall' >&2
    echo "check-unit: FAIL: exposure above $((MAX_EXPOSURE / 10)).$((MAX_EXPOSURE % 10))" >&2
    exit 1
}
echo "$report" | grep -E '✗|Overall'

echo "== systemd-analyze verify $(basename "$unit")"
mkdir -p "$scratch/usr/bin" "$scratch/usr/lib/systemd" "$scratch/etc/systemd/system" \
    "$scratch/usr/share/man/man8"
ln -s usr/bin "$scratch/bin"
ln -s usr/lib "$scratch/lib"
cp -a /usr/lib/systemd/system "$scratch/usr/lib/systemd/"
cp "$(type -P kill)" "$scratch/usr/bin/kill"
printf '#!/bin/sh\nexit 0\n' >"$scratch/usr/bin/usagestatsd"
chmod 755 "$scratch/usr/bin/usagestatsd"
cp "$manpage" "$scratch/usr/share/man/man8/usagestatsd.8"
cp "$unit" "$scratch/usr/lib/systemd/system/usagestatsd.service"
MANPATH=$scratch/usr/share/man systemd-analyze verify --root="$scratch" \
    /usr/lib/systemd/system/usagestatsd.service
echo "== man page $(basename "$manpage"): renders, no groff warnings (lintian's check)"
grep -q '^\.SH NAME' "$manpage" || { echo "check-unit: FAIL: $manpage has no NAME section" >&2; exit 1; }
warnings=$(LC_ALL=C.UTF-8 MANROFFSEQ='' MANWIDTH=80 man --warnings -E UTF-8 -l -Tutf8 -Z "$manpage" 2>&1 >/dev/null)
[ -z "$warnings" ] || { echo "$warnings" >&2; echo "check-unit: FAIL: man page warnings" >&2; exit 1; }
echo "check-unit: OK"
