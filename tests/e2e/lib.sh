# The common preamble of the container checks (deb-systemd.sh, collector-systemd.sh,
# rpm-systemd.sh, journey.sh). Sourced after `set -euo pipefail`, with these set first:
#   here   the directory of the sourcing script (tests/e2e)
#   NAME   each output line's prefix ("deb-systemd: PASS ...")
#   UNIT   the unit `prop` asks about when none is named
# It sets $top (the checkout), $C (container.sh), $version (pyproject.toml's) and $wd (a
# fresh work directory: at exit the container booted in it is stopped and it is removed),
# and defines:
#   check NAME RESULT [DETAIL]   print one PASS/FAIL line and count it (RESULT 0 = pass)
#   in_c CMD...                  run CMD in the container
#   prop PROPERTY [UNIT]         a systemd property of UNIT in the container
#   now_ms / secs MS             the time in ms / MS written as "1.2 s"
#   wait_for SECONDS CMD...      until CMD succeeds (every 0.1 s); 1 if it never did
#   finish [TIME]                stop the container, print the tally; 1 if any check failed
# A match in a pipeline is written `CMD | grep PATTERN >/dev/null`, never `grep -q`: under
# pipefail, -q exits at the first match and CMD's next write then dies of SIGPIPE (141), which
# fails the pipeline, or passes a negated one, at random.
top=$(cd "$here/../.." && pwd)
C=$here/container.sh
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$top/pyproject.toml" | head -n1)
wd=$(mktemp -d "/tmp/usagestatsd-e2e-${NAME%-systemd}.XXXXXX")
trap '"$C" stop "$wd" >/dev/null 2>&1 || true; rm -rf "$wd"' EXIT

passed=0 failed=0
check() {
    if [ "$2" = 0 ]; then
        printf '%s: PASS %s%s\n' "$NAME" "$1" "${3:+ ($3)}"; passed=$((passed + 1))
    else
        printf '%s: FAIL %s%s\n' "$NAME" "$1" "${3:+ ($3)}" >&2; failed=$((failed + 1))
    fi
}
in_c() { "$C" exec "$wd" -- "$@"; }
prop() { in_c systemctl show -p "$1" --value "${2:-$UNIT}"; }
now_ms() { echo $((${EPOCHREALTIME/./} / 1000)); }
secs() { printf '%d.%01d s' $(($1 / 1000)) $(($1 % 1000 / 100)); }
wait_for() {
    local deadline=$(($(now_ms) + $1 * 1000))
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$(now_ms)" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}
finish() {
    "$C" stop "$wd"
    trap 'rm -rf "$wd"' EXIT
    echo "$NAME: $passed passed, $failed failed${1:+ ($1)}"
    [ "$failed" = 0 ]
}

# The demo is not in the packages (make run's, and the tests'): these e2e runs put the
# checkout's copy beside the installed package for `usagestatsd demo-cluster` and
# `demo-receiver`, and take it away before the checks of what removal leaves.
push_demo() { "$C" push "$wd" "$top/usagestatsd/demo" /usr/lib/python3/dist-packages/usagestatsd; }
drop_demo() { in_c rm -rf /usr/lib/python3/dist-packages/usagestatsd/demo; }
