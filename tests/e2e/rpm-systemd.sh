#!/usr/bin/env bash
# The .rpm's scriptlets under real systemd. There is no RPM distribution here, so this runs
# Debian 12's rpm inside the Debian container (booted with the host's network, so that apt
# can fetch rpm): `rpm -i --nodeps` (Debian's python3-* packages stand in for the RPM
# requirements; a .pth file puts the RPM's site-packages on Debian's Python path), then
# checks %post (notice, preset, enabled, started), an upgrade (try-restart), and erasure
# (%preun disable --now, %postun state removal, %ghost consent file); and the collector's
# subpackage (%post collector: preset, started; erasure: stopped, disabled, database kept).
# Needs root.
#   tests/e2e/rpm-systemd.sh [RPM [COLLECTOR_RPM]]
#   (default: dist/usagestatsd-<version>-1.noarch.rpm, dist/usagestatsd-collector-<version>-1.noarch.rpm)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
NAME=rpm-systemd UNIT=usagestatsd
. "$here/lib.sh"  # $top $C $version $wd; check in_c prop now_ms secs wait_for finish
rpm=$(realpath "${1:-$top/dist/usagestatsd-${version}-1.noarch.rpm}")
crpm=$(realpath "${2:-$(dirname "$rpm")/usagestatsd-collector-${version}-1.noarch.rpm}")
for f in "$rpm" "$crpm"; do
    [ -f "$f" ] || { echo "rpm-systemd: FAIL: $f is not built (make rpm)" >&2; exit 1; }
done
wait_active() {
    local _
    for _ in $(seq 100); do [ "$(prop ActiveState)" = "$1" ] && return 0; sleep 0.1; done
    return 1
}

"$C" boot "$wd" --network=host >/dev/null
in_c sh -ec 'apt-get update -qq && apt-get install -y -qq --no-install-recommends rpm >/dev/null' \
    || { echo "rpm-systemd: FAIL: cannot install rpm in the container (network?)" >&2; exit 1; }
"$C" push "$wd" "$rpm" "$crpm" /root
name=$(basename "$rpm")
set +e
pyver=$(in_c python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
in_c sh -c "echo /usr/lib/python$pyver/site-packages >/usr/lib/python3/dist-packages/zz-rpm-site-packages.pth"

out=$(in_c rpm -i --nodeps "/root/$name" 2>&1); rc=$?
check "rpm -i $name" "$rc"
grep -q 'usagestatsd preview' <<<"$out" && grep -q 'usagestatsd disable' <<<"$out" \
    && grep -q 'https://docs.ray.io/en/latest/cluster/usage-stats.html' <<<"$out"
check "%post prints the notice: what is collected, preview, disable, the policy" $?
[ "$(prop UnitFileState)" = enabled ]; check "enabled through systemctl preset" $? "$(prop UnitFileState)"
wait_active active; check "started" $? "$(prop ActiveState) $(prop StatusText)"
sock="$(prop UnitFileState usagestatsd-intake.socket)/$(prop ActiveState usagestatsd-intake.socket)"
[ "$sock" = "enabled/active" ]; check "usagestatsd-intake.socket enabled and listening" $? "$sock"
in_c journalctl -q -o cat -u usagestatsd | grep '^consent.default_enabled' >/dev/null
check "no consent file: the policy default, with the journal saying so" $?
in_c usagestatsd disable >/dev/null; in_c systemctl restart usagestatsd
in_c test -f /etc/usagestatsd/consent.json; check "usagestatsd disable wrote /etc/usagestatsd/consent.json" $?
in_c rpm -qf /etc/usagestatsd/consent.json >/dev/null; check "consent.json is owned by the package (%ghost)" $?
in_c usagestatsd enable >/dev/null; in_c systemctl restart usagestatsd
wait_active active

pid=$(prop MainPID)
out=$(in_c rpm -U --nodeps --replacepkgs "/root/$name" 2>&1); rc=$?
sleep 0.5
[ "$rc" = 0 ] && [ "$(prop ActiveState)" = active ] && [ "$(prop MainPID)" != "$pid" ]
check "upgrade (rpm -U --replacepkgs): try-restart ran the new files" $? "pid $pid -> $(prop MainPID)"
! grep -q 'ENABLED by default' <<<"$out"; check "no notice on upgrade" $?

# The collector's subpackage, beside the daemon.
cname=$(basename "$crpm")
cprop() { in_c systemctl show -p "$1" --value usagestatsd-collector; }
# This container shares the host's network (for apt): a free port, not 18924, which the host
# or another run may be using; set in the settings file, as an operator would.
cport=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
in_c sh -ec "mkdir -p /etc/usagestatsd-collector
    echo 'listen = \"127.0.0.1:$cport\"' >/etc/usagestatsd-collector/collector.toml"
out=$(in_c rpm -i --nodeps "/root/$cname" 2>&1); rc=$?
check "rpm -i $cname" "$rc" "$(tail -n1 <<<"$out")"
[ "$(cprop UnitFileState)" = enabled ]; check "collector: enabled through systemctl preset" $? "$(cprop UnitFileState)"
for _ in $(seq 100); do [ "$(cprop ActiveState)" = active ] && break; sleep 0.1; done
[ "$(cprop ActiveState)" = active ]; check "collector: started (Type=notify)" $? "$(cprop ActiveState)/$(cprop SubState)"
in_c python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10)' \
    "http://127.0.0.1:$cport/healthz"
check "collector: GET /healthz on 127.0.0.1:$cport (listen in /etc/usagestatsd-collector/collector.toml)" $?
in_c test -f /var/lib/private/usagestatsd-collector/collector.sqlite3
check "collector: its database in /var/lib/private/usagestatsd-collector (DynamicUser=)" $?
out=$(in_c rpm -e usagestatsd-collector 2>&1); rc=$?
check "rpm -e usagestatsd-collector" "$rc" "$(tail -n1 <<<"$out")"
in_c test -e /etc/systemd/system/multi-user.target.wants/usagestatsd-collector.service; r=$?
[ "$(cprop ActiveState)" = inactive ] && [ "$r" != 0 ] && ! in_c test -e /usr/bin/usagestatsd-collector
check "collector: erasure stopped and disabled it and removed the program" $? "$(cprop ActiveState)"
in_c test -f /var/lib/private/usagestatsd-collector/collector.sqlite3
check "collector: erasure keeps the database (the fleet's reports)" $?
in_c usagestatsd --version >/dev/null; check "the daemon still works after the collector's erasure" $?

in_c sh -c 'echo "# changed" >>/etc/usagestatsd/usagestatsd.toml'
in_c systemctl enable usagestatsd-provider@root.service >/dev/null 2>&1
# What `usagestatsd setup --apply` writes: a route for Ray's unit, the daemon's drop-in.
in_c sh -ec 'mkdir -p /etc/systemd/system/ray-head.service.d /etc/systemd/system/usagestatsd.service.d
    printf "[Service]\nEnvironment=RAY_USAGE_STATS_REPORT_URL=http://127.0.0.1:18922/\n" \
        >/etc/systemd/system/ray-head.service.d/usagestatsd-route.conf
    printf "[Service]\nUser=\n" >/etc/systemd/system/usagestatsd.service.d/usagestatsd-setup.conf'
out=$(in_c rpm -e usagestatsd 2>&1); rc=$?
check "rpm -e usagestatsd" "$rc" "$(tail -n1 <<<"$out")"
grep -q 'ray-head.service keeps sending .* to http://127.0.0.1:18922/.*systemctl restart ray-head.service' <<<"$out"
check "erasure names the Ray unit still routed to the intake" $? "$(grep -m1 'usagestatsd: removed' <<<"$out" | cut -c1-160)"
dropins=$(in_c sh -c 'ls -d /etc/systemd/system/*.d/usagestatsd-* 2>/dev/null; true')
[ -z "$dropins" ]; check "erasure removed every drop-in of setup's" $? "${dropins:-none left}"
files=$(in_c systemctl list-unit-files --no-legend 'usagestatsd*' || true)
[ -z "$files" ] && [ "$(prop ActiveState)" = inactive ]; check "service stopped, unit gone" $? "${files:-no unit}"
left=$(in_c sh -c 'for p in /etc/usagestatsd/consent.json /etc/usagestatsd/usagestatsd.toml /var/lib/usagestatsd \
    /usr/bin/usagestatsd /usr/lib/usagestatsd /etc/systemd/system/multi-user.target.wants/usagestatsd.service \
    /etc/systemd/system/sockets.target.wants/usagestatsd-intake.socket \
    /etc/systemd/system/multi-user.target.wants/usagestatsd-provider@root.service; do
    [ -e "$p" ] && echo "$p"; done; true')
[ -z "$left" ]; check "erasure removed the program, consent, state and enablement (provider instances too)" $? "${left:-nothing}"
in_c test -f /etc/usagestatsd/usagestatsd.toml.rpmsave; check "the changed settings file kept as .rpmsave" $?

finish
