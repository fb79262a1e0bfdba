#!/usr/bin/env bash
# Smoke test of the container harness: boot, check systemd answers, run a transient unit,
# read the journal, stop. Prints how long each step took. Needs root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
C=$here/container.sh
wd=$(mktemp -d /tmp/usagestatsd-e2e-smoke.XXXXXX)
trap '"$C" stop "$wd" || true; rm -rf "$wd"' EXIT

now() { echo "${EPOCHREALTIME/./}"; }  # microseconds
step() {  # step NAME CMD...: run CMD, print its time; fail the test if it fails
    local name=$1 t0 rc=0
    shift
    t0=$(now)
    "$@" || rc=$?
    local us=$(($(now) - t0))
    printf 'smoke: %-28s %3d.%02ds  exit %d\n' "$name" $((us / 1000000)) $((us % 1000000 / 10000)) "$rc" >&2
    return "$rc"
}

step "root (build or cache)" "$C" root >/dev/null
step "boot" "$C" boot "$wd" >/dev/null

state=$("$C" exec "$wd" -- systemctl is-system-running || true)
case "$state" in
    running | degraded) echo "smoke: system state: $state" >&2 ;;
    *) echo "smoke: FAIL: system state is '$state'" >&2; exit 1 ;;
esac
[ "$("$C" exec "$wd" -- cat /proc/1/comm)" = systemd ] || { echo "smoke: FAIL: PID 1 is not systemd" >&2; exit 1; }

step "systemd-run --wait /bin/true" "$C" exec "$wd" -- systemd-run --quiet --wait --pipe /bin/true
# A failing transient unit must fail the caller too, or later tests would prove nothing.
if "$C" exec "$wd" -- systemd-run --quiet --wait --pipe /bin/false; then
    echo "smoke: FAIL: systemd-run /bin/false reported success" >&2
    exit 1
fi
step "journalctl -n 5" "$C" exec "$wd" -- journalctl -n 5 --no-pager
# Read the journal into a variable, then match: `journalctl | grep -q` under pipefail fails
# whenever grep exits before journalctl has written its last line (SIGPIPE, exit 141). The
# entry can also reach journald a moment after systemd-run returns: look for up to 5 s.
journal_has_transient_unit() {
    local tries=50 out
    while [ $tries -gt 0 ]; do
        out=$("$C" exec "$wd" -- journalctl --no-pager -q -u 'run-*' 2>&1) || true
        case "$out" in *'Deactivated successfully'*) return 0 ;; esac
        tries=$((tries - 1))
        sleep 0.1
    done
    printf 'smoke: the journal of run-* units after 5 s:\n%s\n' "$out" >&2
    return 1
}
journal_has_transient_unit || { echo "smoke: FAIL: the transient unit is not in the journal" >&2; exit 1; }

step "stop" "$C" stop "$wd"
trap 'rm -rf "$wd"' EXIT
echo "smoke: OK" >&2
