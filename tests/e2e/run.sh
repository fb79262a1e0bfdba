#!/usr/bin/env bash
# `make e2e`: build the packages and prove them, as root, on a Debian 12 host (the CI machine).
#   1. the .deb (dpkg-buildpackage + lintian, no errors or warnings) and the .rpm (rpmbuild + rpmlint)
#   2. the two packages install the same files (compare-packages.sh)
#   3. the unit's static checks (check-unit.sh), the packaged settings file and its man page
#      against the daemon's settings (check-settings-file.sh), the container harness (smoke.sh)
#   4. the unit's sandbox under real systemd with a stand-in daemon (sandbox.sh)
#   5. the .deb installed with apt under real systemd, used, opted out of and purged (deb-systemd.sh)
#   6. both .debs installed together under real systemd: the daemon reports into the collector
#      on the same machine and the fleet page shows the cluster (collector-systemd.sh)
#   7. the .rpm's scriptlets under real systemd (rpm-systemd.sh; USAGESTATSD_E2E_RPM=0 skips it)
# Prints one PASS/FAIL line per step with its time, then a summary; exits 1 if any failed.
# Every step's output is in build/e2e/<step>.log.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
logs=$top/build/e2e
mkdir -p "$logs"
[ "$(id -u)" = 0 ] || { echo "e2e: FAIL: must run as root (containers, apt)" >&2; exit 1; }
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$top/pyproject.toml" | head -n1)
deb=$top/dist/usagestatsd_${version}_all.deb
rpm=$top/dist/usagestatsd-${version}-1.noarch.rpm
collector_deb=$top/dist/usagestatsd-collector_${version}_all.deb
collector_rpm=$top/dist/usagestatsd-collector-${version}-1.noarch.rpm

now_ms() { echo $((${EPOCHREALTIME/./} / 1000)); }
results=() failed=0 start=$(now_ms)
step() {  # step NAME CMD...: run CMD with its output in build/e2e/NAME.log
    local name=$1 t rc=0 ms line
    shift
    t=$(now_ms)
    "$@" >"$logs/$name.log" 2>&1 || rc=$?
    ms=$(($(now_ms) - t))
    line=$(printf '%-4s %-16s %6d.%01ds  %s' "$([ $rc = 0 ] && echo PASS || echo FAIL)" "$name" \
        $((ms / 1000)) $((ms % 1000 / 100)) "$*")
    results+=("$line")
    echo "e2e: $line"
    if [ $rc != 0 ]; then
        failed=$((failed + 1))
        grep -E 'FAIL|error|Error|^[EW]: ' "$logs/$name.log" | tail -20 | sed 's/^/    /' >&2
    fi
    return $rc
}
skip() { results+=("$(printf 'FAIL %-16s %8s  %s' "$1" skipped "$2")"); failed=$((failed + 1)); echo "e2e: FAIL $1: $2" >&2; }

step deb "$top/packaging/build-deb.sh" "$top/dist"; deb_ok=$?
step rpm "$top/packaging/build-rpm.sh" "$top/dist"; rpm_ok=$?
if [ $deb_ok = 0 ] && [ $rpm_ok = 0 ]; then
    step compare-packages "$here/compare-packages.sh" --require "$deb" "$rpm" "$collector_deb" "$collector_rpm"
else
    skip compare-packages "needs both packages"
fi
step check-unit "$here/check-unit.sh"
step settings-file "$here/check-settings-file.sh"
step smoke "$here/smoke.sh"
step sandbox "$here/sandbox.sh"
if [ $deb_ok = 0 ]; then
    step deb-systemd "$here/deb-systemd.sh" "$deb"
    grep -E '^deb-systemd: (PASS|FAIL)' "$logs/deb-systemd.log" | sed 's/^/    /'
else
    skip deb-systemd "needs the .deb"
fi
if [ $deb_ok = 0 ]; then
    step collector-systemd "$here/collector-systemd.sh" "$deb" "$collector_deb"
    grep -E '^collector-systemd: (PASS|FAIL)' "$logs/collector-systemd.log" | sed 's/^/    /'
else
    skip collector-systemd "needs the .debs"
fi

# The RPM's scriptlets under systemd (needs apt to fetch rpm into the container; set
# USAGESTATSD_E2E_RPM=0 to leave it out where the machine has no Debian mirror).
if [ "${USAGESTATSD_E2E_RPM:-1}" = 0 ]; then
    results+=("$(printf 'SKIP %-16s %8s  %s' rpm-systemd - 'USAGESTATSD_E2E_RPM=0')")
elif [ $rpm_ok = 0 ]; then
    step rpm-systemd "$here/rpm-systemd.sh" "$rpm" "$collector_rpm"
    grep -E '^rpm-systemd: (PASS|FAIL)' "$logs/rpm-systemd.log" | sed 's/^/    /'
else
    skip rpm-systemd "needs the .rpm"
fi

total=$(($(now_ms) - start))
echo
echo "e2e summary ($(nproc) cores, $((total / 1000)).$((total % 1000 / 100))s in all; logs in $logs):"
printf '  %s\n' "${results[@]}"
grep -hE '^[EW]: ' "$logs/deb.log" >/dev/null 2>&1 && echo "  lintian: errors or warnings, see $logs/deb.log"
if [ $failed = 0 ]; then echo "e2e: PASS"; else echo "e2e: FAIL ($failed step(s))" >&2; exit 1; fi
