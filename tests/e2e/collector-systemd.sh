#!/usr/bin/env bash
# Both .debs under real systemd (Debian 12 in systemd-nspawn, tests/e2e/container.sh, private
# network): usagestatsd and usagestatsd-collector installed together with apt, the daemon
# reporting into the collector on the same machine (a demo Ray session), the fleet page at
# GET / showing the cluster, `usagestatsd forget` deleting it at the collector, then removal
# and purge. Prints one PASS/FAIL line per check; exits 1 if any failed. Needs root.
#   tests/e2e/collector-systemd.sh [DEB COLLECTOR_DEB]
#   (default: dist/usagestatsd_<version>_all.deb dist/usagestatsd-collector_<version>_all.deb)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
NAME=collector-systemd UNIT=usagestatsd-collector
. "$here/lib.sh"  # $top $C $version $wd; check in_c prop now_ms secs wait_for finish
deb=$(realpath "${1:-$top/dist/usagestatsd_${version}_all.deb}")
cdeb=$(realpath "${2:-$top/dist/usagestatsd-collector_${version}_all.deb}")
for f in "$deb" "$cdeb"; do
    [ -f "$f" ] || { echo "collector-systemd: FAIL: $f is not built (make deb)" >&2; exit 1; }
done
URL=http://127.0.0.1:18924
# get PATH: the body of GET $URL/PATH inside the container (curl is not in its root; python3
# is), on stdout; exit 1 unless 200.
get() {
    in_c python3 -c '
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
    sys.stdout.write(r.read().decode())' "$URL$1"
}
page_has() { get "$1" | grep -F -- "$2" >/dev/null; }  # not -q: see lib.sh
stored_reports() {  # rows for SESSION in the collector's SQLite database (read as root)
    in_c python3 -c '
import sqlite3, sys
db = sqlite3.connect("file:/var/lib/usagestatsd-collector/collector.sqlite3?mode=ro", uri=True)
n = 0
for (table,) in db.execute("select name from sqlite_master where type = \"table\""):
    cols = [c[1] for c in db.execute(f"pragma table_info({table})")]
    if "session_id" in cols:
        n += db.execute(f"select count(*) from {table} where session_id = ?", (sys.argv[1],)).fetchone()[0]
print(n)' "$1"
}

t0=$(now_ms)
"$C" boot "$wd" >/dev/null
"$C" push "$wd" "$deb" "$cdeb" /root
echo "collector-systemd: container booted and .debs pushed in $(($(now_ms) - t0)) ms"
set +e

# ---------------------------------------------------------------- install both
in_c sh -c 'echo "usagestatsd usagestatsd/enable boolean true" | debconf-set-selections'
t=$(now_ms)
in_c apt-get install -y -q --no-install-recommends "/root/$(basename "$deb")" "/root/$(basename "$cdeb")" \
    >"$wd/apt-install.log" 2>&1; rc=$?
check "apt-get install ./usagestatsd ./usagestatsd-collector" "$rc" "$(($(now_ms) - t)) ms"
[ "$rc" = 0 ] || { tail -30 "$wd/apt-install.log" >&2; exit 1; }
! grep -qE '^(Get|Err|Ign):[0-9]+ [a-z]+://' "$wd/apt-install.log"
check "apt pulled nothing from outside (the collector's dependencies are in the root)" $?
[ "$(prop UnitFileState)" = enabled ]; check "usagestatsd-collector.service enabled on install" $? "$(prop UnitFileState)"
wait_for 20 sh -c "[ \"\$('$C' exec '$wd' -- systemctl show -p ActiveState --value usagestatsd-collector)\" = active ]"
check "usagestatsd-collector.service active (Type=notify: READY=1 when listening)" $? \
    "$(prop ActiveState)/$(prop SubState), $(prop Type)"
wait_for 10 get /healthz; check "GET /healthz answers 200 on 127.0.0.1:18924" $?
user=$(in_c sh -c 'ps -o user= -p "$(systemctl show -p MainPID --value usagestatsd-collector)"' | tr -d ' ')
[ -n "$user" ] && [ "$user" != root ]; check "runs as a dynamic user, not root" $? "user $user"
in_c test -L /var/lib/usagestatsd-collector && in_c test -d /var/lib/private/usagestatsd-collector
check "state directory /var/lib/usagestatsd-collector -> /var/lib/private/ (DynamicUser=)" $?
exposure=$(in_c systemd-analyze security usagestatsd-collector --no-pager 2>&1 | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
awk -v e="$exposure" 'BEGIN { exit !(e != "" && e <= 1.5) }'
check "systemd-analyze security (the loaded unit): exposure <= 1.5" $? "$exposure"
in_c test -f /usr/share/man/man8/usagestatsd-collector.8.gz; check "man page usagestatsd-collector(8) installed" $?
in_c test -e /usr/lib/python3/dist-packages/usagestatsd/collector
check "usagestatsd/collector/ installed (by the collector's package)" $?
owner=$(in_c dpkg -S /usr/lib/python3/dist-packages/usagestatsd/collector 2>/dev/null | cut -d: -f1)
[ "$owner" = usagestatsd-collector ]; check "dpkg: usagestatsd/collector/ belongs to usagestatsd-collector" $? "$owner"

# ---------------------------------------------------------------- the daemon reports into it
# Deletion needs its own token (never an ingest token); systemd reads collector.env (0600).
DELETION_TOKEN=e2e-deletion-token-0123456789
in_c sh -ec "mkdir -p -m 0755 /etc/usagestatsd-collector; umask 077
    echo USAGESTATSD_COLLECTOR_DELETION_TOKENS=$DELETION_TOKEN >/etc/usagestatsd-collector/collector.env"
in_c systemctl restart usagestatsd-collector
check "collector restarted with a deletion token (collector.env)" $?
push_demo
in_c systemd-run --quiet --unit=demo-ray usagestatsd demo-cluster --temp-root /tmp/ray
wait_for 15 "$C" exec "$wd" -- sh -c 'ls /tmp/ray/session_latest/sockets/ | grep -q .'
check "demo Ray session serving under /tmp/ray" $?
in_c sh -ec "cat >>/etc/usagestatsd/usagestatsd.toml <<EOF

# e2e: report every 2 s to the collector on this machine
report_interval_s = 2

[[endpoints]]
url = \"$URL/\"
deletion_url = \"${URL/http:\/\//http://forget:$DELETION_TOKEN@}/delete\"
EOF"
in_c systemctl restart usagestatsd; rc=$?
check "systemctl restart usagestatsd (endpoint $URL/)" "$rc"
t=$(now_ms)
wait_for 30 "$C" exec "$wd" -- sh -c 'journalctl -q -o cat -u usagestatsd | grep -q "^report.sent"'
check "the daemon sent a report (journal: report.sent)" $? "$(($(now_ms) - t)) ms after the restart"
sid=$(in_c python3 -c '
import json
print(json.load(open("/tmp/ray/session_latest/usage_stats.json"))["usage_stats"]["session_id"])')
[ -n "$sid" ]; check "the daemon's session_id (usage_stats.json)" $? "$sid"
wait_for 20 page_has / "href=\"/sessions/$sid\""
check "GET / (the fleet page) lists the cluster's session, linked to its reports" $?
get / >"$wd/page.html"
grep -qF "<h1>Ray fleet usage</h1>" "$wd/page.html"; check "the page is the fleet page (heading)" $?
grep -qF "2.60.0" "$wd/page.html"; check "the fleet page shows the cluster's Ray version (2.60.0)" $?
# What a person reads there, roughly: the text without markup or style.
python3 -c '
import re, sys
text = re.sub(r"<style>.*?</style>|<[^>]+>", " ", open(sys.argv[1]).read(), flags=re.S)
print("  page text:", " ".join(text.split())[:400])' "$wd/page.html"
page_has "/sessions/$sid" "<h1>Session $sid</h1>" && page_has "/sessions/$sid" "stored report(s)"
check "GET /sessions/<id> shows the stored reports" $? "$(get "/sessions/$sid" | grep -o "[0-9]* stored report(s)")"
page_has /api/fleet "{"; check "GET /api/fleet answers JSON" $?
page_has /metrics "# "; check "GET /metrics answers Prometheus text" $?
n=$(stored_reports "$sid"); [ "${n:-0}" -ge 1 ]
check "the collector's SQLite database holds the session's reports" $? "$n row(s)"

# ---------------------------------------------------------------- forget: deleted at the collector
in_c systemctl stop usagestatsd
out=$(in_c usagestatsd forget --session "$sid" 2>&1); rc=$?
check "usagestatsd forget --session <id>: confirmed by the collector (exit 0)" "$rc" "$(tail -n1 <<<"$out")"
n=$(stored_reports "$sid"); [ "$n" = 0 ]; check "nothing of that session is left in the database" $? "$n row(s)"
! page_has / "$sid"; check "the fleet page no longer shows it" $?

# ---------------------------------------------------------------- secrets through collector.env
# The settings file must be readable by the transient user; tokens go in collector.env (0600
# root), which systemd reads before the service starts.
in_c sh -ec 'mkdir -p -m 0755 /etc/usagestatsd-collector; umask 077
    echo "USAGESTATSD_COLLECTOR_INGEST_TOKENS=e2e-token-0123456789abcdef" >/etc/usagestatsd-collector/collector.env'
in_c systemctl restart usagestatsd-collector; rc=$?
code=$(in_c python3 -c '
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(urllib.request.Request(sys.argv[1], data=b"{}", method="POST"), timeout=10)
    print(200)
except urllib.error.HTTPError as e:
    print(e.code)' "$URL/")
[ "$rc" = 0 ] && [ "$code" = 401 ]
check "collector.env (0600, root) sets an ingest token: a POST without it gets 401" $? "restart $rc, HTTP $code"
in_c rm -rf /etc/usagestatsd-collector

# ---------------------------------------------------------------- restart, remove, purge
in_c systemctl stop demo-ray
drop_demo
t=$(now_ms)
in_c systemctl restart usagestatsd-collector; rc=$?
check "systemctl restart usagestatsd-collector" "$rc" "$(($(now_ms) - t)) ms"
t=$(now_ms)
in_c systemctl stop usagestatsd-collector; rc=$?
ms=$(($(now_ms) - t))
[ "$rc" = 0 ] && [ "$ms" -lt 5000 ] && [ "$(prop Result)" = success ]
check "systemctl stop: within 5 s, Result=success" $? "$ms ms, $(prop Result)"
in_c systemctl start usagestatsd-collector
in_c apt-get remove -y -q usagestatsd-collector >"$wd/apt-remove.log" 2>&1; rc=$?
check "apt-get remove usagestatsd-collector" "$rc"
[ "$(in_c systemctl is-active usagestatsd-collector)" != active ]; check "the service is stopped" $?
in_c test -f /var/lib/private/usagestatsd-collector/collector.sqlite3
check "remove keeps the database" $?
in_c test -e /usr/lib/python3/dist-packages/usagestatsd/cli/commands.py && in_c usagestatsd --version >/dev/null
check "the daemon's package is untouched" $?
in_c test -e /usr/lib/python3/dist-packages/usagestatsd/collector; r=$?
[ "$r" != 0 ]; check "usagestatsd/collector/ is gone" $?
in_c apt-get purge -y -q usagestatsd-collector >"$wd/apt-purge.log" 2>&1; rc=$?
check "apt-get purge usagestatsd-collector" "$rc"
left=$(in_c sh -c 'for p in /var/lib/usagestatsd-collector /var/lib/private/usagestatsd-collector \
        /lib/systemd/system/usagestatsd-collector.service /usr/bin/usagestatsd-collector \
        /etc/systemd/system/multi-user.target.wants/usagestatsd-collector.service \
        /var/lib/systemd/deb-systemd-helper-enabled/usagestatsd-collector.service.dsh-also \
        /usr/share/doc/usagestatsd-collector; do
    [ -e "$p" ] || [ -L "$p" ] && echo "$p"; done; true')
[ -z "$left" ]; check "purge left nothing behind" $? "${left:-nothing}"

finish "$(($(now_ms) - t0)) ms"
