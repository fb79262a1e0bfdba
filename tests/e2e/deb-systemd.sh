#!/usr/bin/env bash
# The built .deb under real systemd (Debian 12 in systemd-nspawn, tests/e2e/container.sh):
# install it with apt (debconf answer preseeded: enable), run it against a demo Ray session
# and a local receiver, check what an operator sees (OPERATOR.md), opt out, purge; then the
# "no" answer. Prints one PASS/FAIL line per check; exits 1 if any failed. Needs root.
#   tests/e2e/deb-systemd.sh [DEB]      (default: dist/usagestatsd_<version>_all.deb)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
NAME=deb-systemd UNIT=usagestatsd
. "$here/lib.sh"  # $top $C $version $wd; check in_c prop now_ms secs wait_for finish
deb=$(realpath "${1:-$top/dist/usagestatsd_${version}_all.deb}")
[ -f "$deb" ] || { echo "deb-systemd: FAIL: $deb is not built (make deb)" >&2; exit 1; }
PORT=18931

reports() { in_c journalctl -q -o cat -u demo-receiver --no-pager | grep -c '^receiver: got a report' || true; }
daemon_log() {  # the current invocation's journal lines, or all of them with "all"
    if [ "${1:-}" = all ]; then in_c journalctl -q -o cat -u usagestatsd --no-pager
    else in_c journalctl -q -o cat --no-pager "_SYSTEMD_INVOCATION_ID=$(prop InvocationID)"; fi
}

t0=$(now_ms)
"$C" boot "$wd" >/dev/null
"$C" push "$wd" "$deb" /root
debname=$(basename "$deb")
echo "deb-systemd: container booted and .deb pushed in $(($(now_ms) - t0)) ms"
# From here on every outcome is a check: a failure is counted, not fatal.
set +e

# ---------------------------------------------------------------- install, answer "yes"
in_c sh -c 'echo "usagestatsd usagestatsd/enable boolean true" | debconf-set-selections'
t=$(now_ms)
rc=0
in_c apt-get install -y -q --no-install-recommends "/root/$debname" >"$wd/apt-install.log" 2>&1 || rc=$?
check "apt-get install ./$debname (non-interactive, preseeded: enable)" "$rc" "$(($(now_ms) - t)) ms"
[ "$rc" = 0 ] || { tail -30 "$wd/apt-install.log" >&2; exit 1; }
# Only Debian's own packages: nothing was downloaded (the container has no network).
! grep -qE '^(Get|Err|Ign):[0-9]+ [a-z]+://' "$wd/apt-install.log"
check "apt pulled nothing from outside" $? "$(grep -cE '^Get:' "$wd/apt-install.log") local"

consent=$(in_c cat /etc/usagestatsd/consent.json 2>&1 || true)
in_c python3 -c 'import json,sys; sys.exit(json.load(open("/etc/usagestatsd/consent.json")).get("usage_stats") is not True)'
check "debconf answer recorded in /etc/usagestatsd/consent.json" $? "$(tr -d ' \n' <<<"$consent")"
sel=$(in_c debconf-show usagestatsd 2>&1 || true)
grep -q 'usagestatsd/enable: true' <<<"$sel"; check "debconf database holds the answer" $? "$(tr -d '*\n' <<<"$sel")"
in_c dpkg-query -W -f='${Conffiles}\n' usagestatsd | grep ' /etc/usagestatsd/usagestatsd.toml ' >/dev/null
check "/etc/usagestatsd/usagestatsd.toml is a conffile" $?
[ "$(prop UnitFileState)" = enabled ]; check "usagestatsd.service enabled on install" $? "$(prop UnitFileState)"
wait_for 10 sh -c "[ \"\$('$C' exec '$wd' -- systemctl show -p ActiveState --value usagestatsd)\" = active ]"
check "usagestatsd.service started on install" $? "$(prop ActiveState)/$(prop SubState)"
sock="$(prop UnitFileState usagestatsd-intake.socket)/$(prop ActiveState usagestatsd-intake.socket)"
[ "$sock" = "enabled/active" ]; check "usagestatsd-intake.socket enabled and listening on install" $? "$sock"
status=$(prop StatusText)
[[ "$status" == "Waiting for a Ray session under /tmp/ray" ]]; check "STATUS before Ray runs" $? "$status"
for page in usagestatsd.8.gz:man8 usagestatsd.toml.5.gz:man5; do
    in_c test -f "/usr/share/man/${page#*:}/${page%:*}"; check "man page ${page%:*} installed" $?
done

# ---------------------------------------------------------------- a Ray session and a receiver
push_demo
in_c systemd-run --quiet --unit=demo-ray usagestatsd demo-cluster --temp-root /tmp/ray
in_c systemd-run --quiet --unit=demo-receiver usagestatsd demo-receiver --port $PORT
wait_for 15 "$C" exec "$wd" -- sh -c 'ls /tmp/ray/session_latest/sockets/ | grep -q .'
check "demo Ray session serving under /tmp/ray" $?
wait_for 15 "$C" exec "$wd" -- sh -c "journalctl -q -o cat -u demo-receiver | grep -q listening"
check "demo receiver listening on 127.0.0.1:$PORT" $?

in_c sh -ec "cat >>/etc/usagestatsd/usagestatsd.toml <<EOF

# e2e: report every 2 s to the demo receiver
report_interval_s = 2

[[endpoints]]
url = \"http://127.0.0.1:$PORT/\"
EOF"
t=$(now_ms)
in_c systemctl restart usagestatsd; rc=$?
check "systemctl restart usagestatsd" "$rc" "$(($(now_ms) - t)) ms"
[ "$(in_c systemctl is-active usagestatsd || true)" = active ]; check "systemctl is-active: active" $?

t=$(now_ms)
wait_for 20 sh -c "[ \$('$C' exec '$wd' -- journalctl -q -o cat -u demo-receiver | grep -c '^receiver: got a report') -ge 2 ]"
check "reports arrive at the receiver (journal: 'receiver: got a report')" $? \
    "$(reports) in $(($(now_ms) - t)) ms after the restart"
log=$(daemon_log)
grep -q '^session.found .*session_dir=/tmp/ray/session_' <<<"$log"; check "journal: session.found, with the session directory" $?
grep -q '^report.sent .*endpoint=' <<<"$log" || grep -q '^report.sent ' <<<"$log"
check "journal: report.sent" $? "$(grep -m1 '^report.sent' <<<"$log" | cut -c1-150)"

# Priorities: -p warning shows only warning (4) and worse; routine events are info (6).
warn_json=$(in_c journalctl -u usagestatsd -p warning -o json --no-pager || true)
bad=$(python3 -c '
import json, sys
bad = [l for l in sys.stdin.read().splitlines() if l.strip() and int(json.loads(l)["PRIORITY"]) > 4]
print(len(bad))' <<<"$warn_json")
[ "$bad" = 0 ]; check "journalctl -p warning: only priorities <= 4" $? "$(grep -c . <<<"$warn_json" || true) lines"
warn_text=$(in_c journalctl -q -o cat -u usagestatsd -p warning --no-pager || true)
[ -n "$warn_text" ] && printf '  warning line: %s\n' "$warn_text" | cut -c1-200
! grep -qE '^(report\.sent|session\.found|consent\.enabled)' <<<"$warn_text"
check "journalctl -p warning: no routine events" $?
prio=$(in_c journalctl -u usagestatsd -o json --no-pager | python3 -c '
import json, sys
for l in sys.stdin:
    e = json.loads(l)
    if str(e.get("MESSAGE", "")).startswith("report.sent"):
        print(e["PRIORITY"]); break')
[ "$prio" = 6 ]; check "report.sent logged at priority info (6)" $? "PRIORITY=$prio"

status=$(in_c systemctl status usagestatsd --no-pager 2>&1 || true)
grep -qE 'Status: "Last report [0-9]{2}:[0-9]{2}:[0-9]{2} ok \(seq [0-9]+\); next [0-9:]+"' <<<"$status"
check "systemctl status: Last report ... ok (seq N) line" $? "$(grep -o 'Status: .*' <<<"$status")"
in_c test -f /tmp/ray/session_latest/usage_stats.json; check "usage_stats.json written in the session directory" $?
in_c usagestatsd status >"$wd/status.txt" 2>&1; rc=$?
[ "$rc" = 0 ] && grep -q '/etc/usagestatsd/consent.json' "$wd/status.txt"
check "usagestatsd status: enabled, decided by /etc/usagestatsd/consent.json" $? "exit $rc"
in_c usagestatsd preview >"$wd/preview.json" 2>"$wd/preview.err"; rc=$?
[ "$rc" = 0 ] && python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$wd/preview.json"
check "usagestatsd preview prints the JSON report" $? "exit $rc"

t=$(now_ms)
in_c systemctl stop usagestatsd; rc=$?
ms=$(($(now_ms) - t))
[ "$rc" = 0 ] && [ "$ms" -lt 2000 ]; check "systemctl stop within 2 s" $? "$ms ms"
[ "$(prop Result)" = success ]; check "stopped cleanly (Result=success)" $? "$(prop Result)"

# ---------------------------------------------------------------- opt out
in_c systemctl start usagestatsd
out=$(in_c usagestatsd disable 2>&1); rc=$?
check "usagestatsd disable" "$rc" "$(head -n1 <<<"$out")"
t=$(now_ms)
in_c systemctl restart usagestatsd; rc=$?
check "systemctl restart usagestatsd (disabled)" "$rc" "$(($(now_ms) - t)) ms"
wait_for 10 sh -c "[ \"\$('$C' exec '$wd' -- systemctl show -p SubState --value usagestatsd)\" = dead ]"
before=$(reports)
log=$(daemon_log)
n=$(grep -c '^consent.disabled' <<<"$log" || true)
[ "$n" = 1 ]; check "one consent.disabled journal line" $? "$(grep -m1 '^consent.disabled' <<<"$log" | cut -c1-200)"
grep -q "^consent.disabled .*/etc/usagestatsd/consent.json" <<<"$log"; check "it names the setting that disabled it" $?
[ "$(grep -vc '^consent.disabled' <<<"$log" || true)" = 0 ]; check "nothing else logged by the disabled daemon" $? \
    "$(grep -v '^consent.disabled' <<<"$log" | head -n2 | tr '\n' ' ')"
sleep 5  # more than two report intervals
[ "$(reports)" = "$before" ]; check "no further reports" $? "$before before, $(reports) 5 s later"
state="$(prop ActiveState)/$(prop SubState)/$(prop Result)/restarts=$(prop NRestarts)"
[ "$state" = "inactive/dead/success/restarts=0" ]; check "unit inactive and not restarting" $? "$state"

# ---------------------------------------------------------------- purge
in_c systemctl stop demo-ray demo-receiver
drop_demo
# An operator had enabled the provider for Ray's user too.
in_c systemctl enable usagestatsd-provider@root.service >/dev/null 2>&1
in_c test -L /etc/systemd/system/multi-user.target.wants/usagestatsd-provider@root.service
check "usagestatsd-provider@root enabled (before purge)" $?
# ... and had run `usagestatsd setup --apply`, whose drop-ins route Ray's own reporter into the
# intake and set up the daemon and the provider (what it writes: usagestatsd/setup/remedies.py).
in_c sh -ec 'for d in demo-ray usagestatsd usagestatsd-provider@root; do mkdir -p /etc/systemd/system/$d.service.d; done
    printf "[Service]\nEnvironment=RAY_USAGE_STATS_REPORT_URL=http://127.0.0.1:18922/\n" \
        >/etc/systemd/system/demo-ray.service.d/usagestatsd-route.conf
    printf "[Service]\nUser=\n" >/etc/systemd/system/usagestatsd.service.d/usagestatsd-setup.conf
    printf "[Service]\nEnvironment=USAGESTATSD_RAY_TEMP_ROOT=/tmp/ray\n" \
        >/etc/systemd/system/usagestatsd-provider@root.service.d/usagestatsd-setup.conf
    systemctl daemon-reload'
t=$(now_ms)
in_c apt-get purge -y -q usagestatsd >"$wd/apt-purge.log" 2>&1; rc=$?
check "apt-get purge usagestatsd" "$rc" "$(($(now_ms) - t)) ms"
grep -q 'demo-ray.service keeps sending .* to http://127.0.0.1:18922/.*systemctl restart demo-ray.service' "$wd/apt-purge.log"
check "removal names the Ray unit still routed to the intake, and the restart that ends it" $? \
    "$(grep -m1 'usagestatsd: removed' "$wd/apt-purge.log" | cut -c1-160)"
dropins=$(in_c sh -c 'ls -d /etc/systemd/system/*.d/usagestatsd-* 2>/dev/null; true')
[ -z "$dropins" ]; check "purge removed every drop-in of setup's" $? "${dropins:-none left}"
env_now=$(in_c systemctl show -p Environment --value demo-ray.service)
! grep -q RAY_USAGE_STATS_REPORT_URL <<<"$env_now"
check "Ray's unit no longer routes its reporter to the intake" $? "Environment=${env_now:-(empty)}"
left=$(in_c sh -c 'for p in /etc/usagestatsd /var/lib/usagestatsd /lib/systemd/system/usagestatsd.service \
        /lib/systemd/system/usagestatsd-intake.socket /etc/systemd/system/sockets.target.wants/usagestatsd-intake.socket \
        /lib/systemd/system/usagestatsd-provider@.service /etc/systemd/system/multi-user.target.wants/usagestatsd.service \
        /var/lib/systemd/deb-systemd-helper-enabled/usagestatsd.service.dsh-also /usr/bin/usagestatsd \
        /etc/systemd/system/multi-user.target.wants/usagestatsd-provider@root.service \
        /usr/lib/usagestatsd /usr/lib/python3/dist-packages/usagestatsd /usr/share/doc/usagestatsd; do
    [ -e "$p" ] || [ -L "$p" ] && echo "$p"; done; true')
[ -z "$left" ]; check "purge left nothing behind" $? "${left:-nothing}"
sel=$(in_c debconf-show usagestatsd 2>/dev/null || true)
[ -z "$sel" ]; check "purge removed the debconf answers" $? "${sel:-none}"
[ -z "$(in_c dpkg-query -W -f='${Status}' usagestatsd 2>/dev/null || true)" ]; check "dpkg forgot the package" $?
files=$(in_c systemctl list-unit-files --no-legend 'usagestatsd*' || true)
[ -z "$files" ]; check "systemd knows no usagestatsd unit" $? "${files:-none}"
in_c test -d /tmp/ray/session_latest; check "purge left Ray's session directory alone" $?

# ---------------------------------------------------------------- install, answer "no"
in_c sh -c 'echo "usagestatsd usagestatsd/enable boolean false" | debconf-set-selections'
in_c apt-get install -y -q --no-install-recommends "/root/$debname" >"$wd/apt-install-no.log" 2>&1; rc=$?
check "apt-get install, preseeded: do not enable" "$rc"
in_c python3 -c 'import json,sys; sys.exit(json.load(open("/etc/usagestatsd/consent.json")).get("usage_stats") is not False)'
check "answer 'no' recorded in consent.json" $? "$(in_c cat /etc/usagestatsd/consent.json | tr -d '\n ')"
wait_for 10 sh -c "[ \"\$('$C' exec '$wd' -- systemctl show -p SubState --value usagestatsd)\" = dead ]"
state="$(prop UnitFileState)/$(prop ActiveState)/$(prop Result)"
[ "$state" = "enabled/inactive/success" ]; check "service enabled, started, and exited: disabled" $? "$state"
log=$(daemon_log)
[ "$(grep -c . <<<"$log")" = 1 ] && grep -q '^consent.disabled' <<<"$log"
check "it logged consent.disabled and nothing else" $? "$(head -n1 <<<"$log" | cut -c1-150)"
in_c usagestatsd status >/dev/null 2>&1; rc=$?
[ "$rc" = 3 ]; check "usagestatsd status exits 3 (disabled)" $? "exit $rc"

# ---------------------------------------------------------------- later decisions survive
in_c usagestatsd enable >/dev/null 2>&1
in_c apt-get install -y -q --reinstall "/root/$debname" >"$wd/apt-reinstall.log" 2>&1; rc=$?
in_c python3 -c 'import json,sys; sys.exit(json.load(open("/etc/usagestatsd/consent.json")).get("usage_stats") is not True)'
r=$?; [ "$rc" = 0 ] && [ "$r" = 0 ]
check "reinstall keeps a later 'usagestatsd enable' (the question shows the file's answer)" $? \
    "$(in_c debconf-show usagestatsd | tr -d '*\n')"
wait_for 10 sh -c "[ \"\$('$C' exec '$wd' -- systemctl show -p ActiveState --value usagestatsd)\" = active ]"
check "and the reinstall restarted the service: active" $? "$(prop ActiveState)"
# The question as an operator sees it (debconf's plain-text frontend), answered "no".
out=$(in_c sh -c 'echo no | DEBIAN_FRONTEND=teletype DEBIAN_PRIORITY=high dpkg-reconfigure usagestatsd' 2>&1); rc=$?
grep -q 'Report anonymous Ray usage statistics? \[yes/no\]' <<<"$out" \
    && grep -q 'https://docs.ray.io/en/latest/cluster/usage-stats.html' <<<"$out" \
    && grep -q 'usagestatsd preview' <<<"$out"
check "dpkg-reconfigure asks the question, links the policy, names preview" $? "exit $rc"
in_c python3 -c 'import json,sys; sys.exit(json.load(open("/etc/usagestatsd/consent.json")).get("usage_stats") is not False)'
check "answer 'no' at the prompt recorded in consent.json" $?
wait_for 10 sh -c "[ \"\$('$C' exec '$wd' -- systemctl show -p SubState --value usagestatsd)\" = dead ]"
log=$(daemon_log)
[ "$(prop ActiveState)" = inactive ] && grep -q '^consent.disabled' <<<"$log"
check "reconfigure restarted the service, which stopped: disabled" $? "$(prop ActiveState)"
# A broken settings file (the service cannot start: exit 78) does not lose the answer.
in_c sh -c 'echo "no_such_setting = 1" >>/etc/usagestatsd/usagestatsd.toml'
out=$(in_c sh -c 'echo yes | DEBIAN_FRONTEND=teletype DEBIAN_PRIORITY=high dpkg-reconfigure usagestatsd' 2>&1); rc=$?
in_c python3 -c 'import json,sys; sys.exit(json.load(open("/etc/usagestatsd/consent.json")).get("usage_stats") is not True)'
r=$?; [ "$rc" = 0 ] && [ "$r" = 0 ] && grep -q 'is unusable; recorded the answer' <<<"$out"
check "settings file broken: the answer is still recorded, and the postinst says so" $? "exit $rc"
wait_for 10 sh -c "[ \"\$('$C' exec '$wd' -- systemctl show -p SubState --value usagestatsd)\" = failed ]"
[ "$(prop ExecMainStatus)/$(prop NRestarts)" = "78/0" ]
check "and the service fails with 78, not restarting" $? "$(prop SubState) status=$(prop ExecMainStatus) restarts=$(prop NRestarts)"

in_c apt-get purge -y -q usagestatsd >/dev/null 2>&1; rc=$?
left=$(in_c sh -c 'ls -d /etc/usagestatsd /var/lib/usagestatsd 2>/dev/null; debconf-show usagestatsd 2>/dev/null; true')
[ "$rc" = 0 ] && [ -z "$left" ]; check "purge again: nothing left" $? "${left:-nothing}"

finish "$(($(now_ms) - t0)) ms"
