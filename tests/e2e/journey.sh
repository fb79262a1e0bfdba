#!/usr/bin/env bash
# `make e2e-journey`: an operator's whole path, under real systemd in the Debian 12 container
# (tests/e2e/container.sh), with a real Ray 2.60:
#   install the .deb -> start Ray as an operator does (user `ray`, unit ray-head.service)
#   -> follow only what `usagestatsd setup` prints (--apply, then the Ray restart it names)
#   -> the first complete report reaches a receiver on 127.0.0.1, equal to Ray's own report,
#      and `usagestatsd status`, `systemctl status` and the journal agree
#   -> each opt-out in turn: all three views say off, and nothing is sent.
# Prints one PASS/FAIL line per check and the time from `ray start` to the first report.
# Needs root.
#   tests/e2e/journey.sh [DEB]     (default: dist/usagestatsd_<version>_all.deb)
# Ray cannot be pip-installed in the container (no network): the host's cached venv is
# copied in at the same path ($RAY_VENV, built with /usr/bin/python3 3.11.2 like the container's).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ "$(id -u)" = 0 ] || { echo "journey: FAIL: must run as root (containers)" >&2; exit 1; }
NAME=journey UNIT=usagestatsd
. "$here/lib.sh"  # $top $C $version $wd; check in_c prop now_ms secs wait_for finish
deb=$(realpath "${1:-$top/dist/usagestatsd_${version}_all.deb}")
RAY_VENV=${RAY_VENV:-/var/cache/usagestatsd-ray/2.60.0/venv}
PORT=18931
INTERVAL=10   # the daemon's report interval here: "nothing is sent" waits longer than it
[ -f "$deb" ] || { echo "journey: FAIL: $deb is not built (make deb)" >&2; exit 1; }
[ -x "$RAY_VENV/bin/ray" ] || { echo "journey: FAIL: no Ray venv at $RAY_VENV (make test-ray)" >&2; exit 1; }
reports() { in_c sh -c 'ls /root/received/*.json 2>/dev/null | wc -l'; }
invocation_log() { in_c journalctl -q -o cat --no-pager "_SYSTEMD_INVOCATION_ID=$(prop InvocationID)"; }

t0=$(now_ms)
"$C" boot "$wd" >/dev/null
"$C" push "$wd" "$deb" "$here/journey" /root
# The venv into the container's root at the same path (its scripts name that path).
mkdir -p "$wd/root$(dirname "$RAY_VENV")"
cp -a --reflink=auto "$RAY_VENV" "$wd/root$RAY_VENV"
echo "journey: container booted, .deb and Ray venv in place ($(secs $(($(now_ms) - t0))))"
set +e

# ---------------------------------------------------------------- install
in_c useradd --system --create-home --home-dir /home/ray --shell /bin/bash ray
in_c sh -c 'echo "usagestatsd usagestatsd/enable boolean true" | debconf-set-selections'
in_c apt-get install -y -q --no-install-recommends "/root/$(basename "$deb")" >"$wd/apt.log" 2>&1
rc=$?; check "apt-get install the .deb" $rc
[ $rc = 0 ] || { tail -20 "$wd/apt.log" >&2; exit 1; }
grep -q 'usagestatsd setup' "$wd/apt.log"; check "the postinst points to 'usagestatsd setup'" $? \
    "$(grep -m1 'usagestatsd setup' "$wd/apt.log" | sed 's/^ *//' | cut -c1-120)"
# The endpoint is a receiver in the container (its own network namespace).
in_c sh -ec "sed -i '1i report_interval_s = $INTERVAL' /etc/usagestatsd/usagestatsd.toml
    printf '\n[[endpoints]]\nurl = \"http://127.0.0.1:$PORT/\"\ndeletion_url = \"http://127.0.0.1:$PORT/delete\"\n' \
        >>/etc/usagestatsd/usagestatsd.toml"
in_c systemd-run --quiet --unit=receiver python3 /root/journey/receiver.py $PORT /root/received
in_c systemctl restart usagestatsd
wait_for 15 in_c sh -c "journalctl -q -o cat -u receiver | grep -q listening"
check "receiver listening on 127.0.0.1:$PORT" $?
out=$(in_c usagestatsd setup 2>&1); rc=$?
[ $rc = 1 ] && grep -q 'No running Ray head found' <<<"$out"; check "setup before Ray: says to start Ray first" $? "exit $rc"

# ---------------------------------------------------------------- Ray, as an operator starts it
in_c sh -ec "cat >/etc/systemd/system/ray-head.service <<EOF
[Unit]
Description=Ray head node
After=network-online.target
[Service]
User=ray
WorkingDirectory=/home/ray
ExecStart=$RAY_VENV/bin/ray start --head --block --num-cpus=1 --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1
[Install]
WantedBy=multi-user.target
EOF
systemctl daemon-reload"
t_ray=$(now_ms)
in_c systemctl enable --now ray-head.service >/dev/null 2>&1; check "systemctl enable --now ray-head (user ray)" $?
wait_for 120 in_c sh -c 'usagestatsd setup | grep -q "Ray on this machine"'
check "setup finds the running Ray" $? "$(secs $(($(now_ms) - t_ray))) after ray start"
# Before setup, the service (root) does not trust Ray's files (user ray): it says so.
wait_for 15 in_c sh -c 'journalctl -q -o cat -u usagestatsd | grep -q "^session.untrusted.*fix=\"sudo usagestatsd setup\""'
check "before setup: journal names Ray's user and 'sudo usagestatsd setup'" $? \
    "$(in_c journalctl -q -o cat -u usagestatsd | grep -m1 '^session.untrusted' | cut -c1-150)"
st=$(in_c usagestatsd status 2>&1)
grep -q "none trusted: Ray's files under /tmp/ray belong to ray (uid [0-9]*)" <<<"$st"
check "before setup: usagestatsd status names Ray's user" $? "$(grep -m1 'Session:' <<<"$st" | cut -c1-150)"
grep -q "Not reporting: Ray's files under /tmp/ray belong to .*run: sudo usagestatsd setup" <<<"$(prop StatusText)"
check "before setup: STATUS= names it too" $? "$(prop StatusText | cut -c1-160)"
out=$(in_c usagestatsd setup 2>&1); rc=$?
echo "$out" >"$wd/setup-1.txt"
sed 's/^/    | /' "$wd/setup-1.txt"
[ $rc = 1 ]; check "setup: something is missing (exit 1)" $? "exit $rc"
grep -q '^  user: *ray$' <<<"$out"; check "setup: Ray's user is ray" $?
grep -q "^  Python: *$RAY_VENV/bin/python$" <<<"$out"; check "setup: Ray's Python is the venv's" $?
grep -q '^  Ray version: *2.60.0 (installed package)$' <<<"$out"; check "setup: Ray 2.60.0" $?
grep -q '^  temp root: *\/tmp\/ray$' <<<"$out"; check "setup: temp root /tmp/ray" $?
grep -q '^  started by: *systemd unit ray-head.service$' <<<"$out"; check "setup: Ray runs in ray-head.service" $?
grep -q "usagestatsd runs as root, but Ray runs as ray" <<<"$out"; check "setup: names the wrong user" $?
grep -q "Ray's own reporter sends to Ray's endpoint" <<<"$out"; check "setup: Ray's reporter is not routed" $?
grep -q "No provider serves this session" <<<"$out"; check "setup: no provider" $?

# ---------------------------------------------------------------- follow setup
out=$(in_c usagestatsd setup --apply 2>&1); rc=$?
echo "$out" >"$wd/setup-apply.txt"
sed -n '/^Applying:/,$p' "$wd/setup-apply.txt" | sed 's/^/    | /'
[ "$(prop User)" = ray ]; check "--apply: usagestatsd runs as ray" $? "User=$(prop User)"
[ "$(prop ActiveState usagestatsd-provider@ray.service)/$(prop UnitFileState usagestatsd-provider@ray.service)" = active/enabled ]
check "--apply: usagestatsd-provider@ray enabled and active" $?
in_c test -S /tmp/ray/session_latest/sockets/usagestatsd_provider; check "--apply: the provider serves" $?
! in_c sh -c 'journalctl -q -u ray-head | grep "Stopping\|Stopped" >/dev/null'
check "--apply did not restart Ray" $?
mapfile -t runs < <(sed -n '/^After applying:/,$p' "$wd/setup-apply.txt" | sed -n 's/^run: //p')
[ "${#runs[@]}" -gt 0 ] && [ "${runs[-1]}" = "systemctl restart ray-head.service" ]
check "setup tells the operator to restart Ray (and how)" $? "$(IFS='; '; echo "${runs[*]}")"
in_c systemd-run --quiet --unit=watch-ray python3 /root/journey/watch.py /tmp/ray /root/ray-wrote
for cmd in "${runs[@]}"; do
    t=$(now_ms)
    # shellcheck disable=SC2086  # setup prints plain words, one command per line
    in_c $cmd; check "ran: $cmd" $? "$(secs $(($(now_ms) - t)))"
done
# `systemctl restart` returns once the new `ray start` runs (Type=simple): Ray starts now.
t_ray=$(now_ms)
wait_for 60 in_c sh -c "usagestatsd setup >/dev/null"
out=$(in_c usagestatsd setup 2>&1); rc=$?
echo "$out" >"$wd/setup-2.txt"
[ $rc = 0 ] && grep -q 'Everything is in place' <<<"$out"; check "setup after Ray's restart: everything is in place" $? "exit $rc"

# ---------------------------------------------------------------- the first complete report
wait_for 240 in_c sh -c 'ls /root/received/*.json >/dev/null 2>&1'
rc=$?; t_first=$(in_c sh -c 'ls /root/received/*.json | head -n1 | xargs -n1 basename | cut -d. -f1')
first_ms=$(( ${t_first:-0} - t_ray ))
check "first report at the receiver" $rc "$(secs $first_ms) after the routed ray start; $(secs $((${t_first:-0} - t0))) after boot"
in_c sh -c 'cat "$(ls /root/received/*.json | head -n1)"' >"$wd/ours.json"
rm -rf "$wd/ray-wrote"; mkdir "$wd/ray-wrote"
in_c tar -C /root/ray-wrote -cf - . | tar -C "$wd/ray-wrote" -xf -
python3 "$here/journey/compare.py" "$wd/ours.json" "$wd/ray-wrote" >"$wd/compare.txt" 2>&1
rc=$?; sed 's/^/    /' "$wd/compare.txt"
check "the first report equals Ray's own, field by field" $rc "$(tail -n1 "$wd/compare.txt")"
ray_first=$(sed -n "s/^  Ray's own report: written at \([0-9]*\).json$/\1/p" "$wd/compare.txt")
[ -n "$ray_first" ] && echo "journey: Ray's own first report $(secs $((ray_first - t_ray))) after the routed ray start; ours $(secs $((t_first - ray_first))) after it"
# Complete: the dashboard's facts and the provider's (cluster id, tags, hardware) are there.
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(any(d[k] is None for k in ("session_id","ray_version","git_commit","total_num_cpus","total_num_nodes","total_memory_gb","total_num_running_jobs","hardware_usages","extra_usage_tags")) or not d["extra_usage_tags"])' "$wd/ours.json"
check "the first report is complete (dashboard and provider fields present)" $?

st=$(in_c usagestatsd status 2>&1); rc=$?
echo "$st" >"$wd/status-on.txt"
[ $rc = 0 ] && grep -qi 'enabled' <<<"$st"; check "usagestatsd status: enabled (exit 0)" $? "exit $rc"
grep -q "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["session_id"])' "$wd/ours.json")" <<<"$st"
check "usagestatsd status: the session id that was reported" $?
grep -q "only usagestatsd reports" <<<"$st"; check "usagestatsd status: Ray's reporter is routed to the intake" $? \
    "$(grep -m1 "Ray's reporter" <<<"$st" | sed 's/^ *//')"
sys_st=$(in_c systemctl status usagestatsd --no-pager 2>&1)
grep -qE 'Status: "Last report [0-9:]+ ok' <<<"$sys_st"; check "systemctl status: Last report ... ok" $? "$(grep -o 'Status: .*' <<<"$sys_st")"
log=$(invocation_log)
grep -q '^report.sent' <<<"$log" && grep -q '^beside_ray.report_absorbed' <<<"$log"
check "journal: Ray's report absorbed at the intake, then report.sent" $?
! grep -q '^beside_ray.standing_down' <<<"$log"; check "journal: no standing down" $?
# Every user sees the service's facts (or is told what to run): root, Ray's user, another.
in_c useradd --create-home --shell /bin/bash other 2>/dev/null
for who in root ray other; do
    if [ $who = root ]; then as=(); else as=(runuser -u $who --); fi
    st=$(in_c "${as[@]}" usagestatsd status 2>&1)
    grep -q '^Service: *running since' <<<"$st" && grep -qE '^Last report: .* seq [0-9]+' <<<"$st"
    check "usagestatsd status as $who: the service runs, its last report" $? \
        "$(grep -m1 '^Service:' <<<"$st" | cut -c1-60); $(grep -m1 '^Last report:' <<<"$st" | cut -c1-60)"
    hist=$(in_c "${as[@]}" usagestatsd history 2>&1)
    grep -qE ' report +sent +200 ' <<<"$hist"
    check "usagestatsd history as $who: the reports sent" $? "$(grep -m1 -E 'report|cannot' <<<"$hist" | cut -c1-120)"
    if [ $who = other ]; then
        grep -q 'run `sudo usagestatsd history`' <<<"$hist"
        check "usagestatsd history as $who: says what it cannot read, and the command" $?
    fi
    if [ $who = other ]; then
        # Only Ray's user and root may connect to Ray's sockets: what it could not read is
        # named, with what to run (a report it prints then has those fields null).
        err=$(in_c "${as[@]}" usagestatsd preview 2>&1 >/dev/null); rc=$?
        grep -q "connecting needs write permission on Ray's socket: run usagestatsd as the" <<<"$err"
        check "usagestatsd preview as $who: names what it cannot read, and what to run" $? "exit $rc; $(tail -n1 <<<"$err" | cut -c1-140)"
        continue
    fi
    seq=$(in_c "${as[@]}" usagestatsd preview 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["seq_number"])' 2>&1)
    [ "${seq:-0}" -ge 1 ] 2>/dev/null; check "usagestatsd preview as $who: numbered after the service's reports" $? "seq_number ${seq:-?}"
done
# A clean setup and start: nothing at warning or worse from the service as it runs now.
warn=$(in_c journalctl -q -o cat --no-pager -p warning "_SYSTEMD_INVOCATION_ID=$(prop InvocationID)")
[ -z "$warn" ]; check "journalctl -u usagestatsd -p warning: empty since the service started as ray" $? \
    "$(head -n 3 <<<"$warn" | cut -c1-160 | paste -sd'|' -)"
# Ray writes its own usage_stats.json right after its POST to the intake; the file must
# end up holding what usagestatsd sent (put back a second later), not Ray's body.
sleep 2
wait_for 10 in_c python3 -c 'import glob, json
copy = json.load(open("/tmp/ray/session_latest/usage_stats.json"))["usage_stats"]
raise SystemExit(copy not in [json.load(open(f)) for f in glob.glob("/root/received/*.json")])'
check "usage_stats.json holds a report usagestatsd sent, not Ray's" $?

# ---------------------------------------------------------------- opt-outs, one at a time
# off_views NAME: after a restart, all three views say off and nothing is sent.
off_views() {
    local name=$1 before st rc state log
    in_c systemctl restart usagestatsd
    wait_for 10 sh -c "[ \"\$('$C' exec '$wd' -- systemctl show -p ActiveState --value usagestatsd)\" = inactive ]"
    state="$(prop ActiveState)/$(prop SubState)/$(prop Result)"
    check "$name: systemctl: the service stopped itself ($state)" "$([ "$state" = inactive/dead/success ] && echo 0 || echo 1)"
    st=$(in_c systemctl status usagestatsd --no-pager 2>&1)  # exits 3 when inactive
    grep -q 'Active: inactive (dead)' <<<"$st"
    check "$name: systemctl status: Active: inactive (dead)" $? "$(grep -m1 -o 'Status: .*' <<<"$st")"
    log=$(invocation_log)
    grep -q '^consent.disabled' <<<"$log"; check "$name: journal: consent.disabled" $? "$(grep -m1 '^consent.disabled' <<<"$log" | cut -c1-140)"
    st=$(in_c usagestatsd status 2>&1); rc=$?
    check "$name: usagestatsd status says disabled (exit 3)" "$([ $rc = 3 ] && echo 0 || echo 1)" \
        "exit $rc; $(grep -m1 -iE 'disabled|not collect' <<<"$st" | sed 's/^ *//' | cut -c1-120)"
    before=$(reports)
    sleep $((INTERVAL + 2))
    [ "$(reports)" = "$before" ]; check "$name: nothing sent in $((INTERVAL + 2)) s" $? "$before reports before, $(reports) after"
}
back_on() {  # back_on NAME: the service runs again once the opt-out is undone
    in_c systemctl restart usagestatsd
    wait_for 10 sh -c "[ \"\$('$C' exec '$wd' -- systemctl show -p SubState --value usagestatsd)\" = running ]"
    check "$1 undone: the service runs again" $? "$(prop SubState)"
}
dropin=/etc/systemd/system/usagestatsd.service.d/journey-optout.conf
optout_dropin() { in_c sh -ec "mkdir -p ${dropin%/*}; printf '[Service]\n%s\n' '$1' >$dropin; systemctl daemon-reload"; }
undo_dropin() { in_c sh -ec "rm -f $dropin; systemctl daemon-reload"; }

in_c usagestatsd disable >/dev/null
off_views "usagestatsd disable"
in_c usagestatsd enable >/dev/null; back_on "usagestatsd disable"

optout_dropin "Environment=RAY_USAGE_STATS_ENABLED=0"
off_views "RAY_USAGE_STATS_ENABLED=0 drop-in"
undo_dropin; back_on "RAY_USAGE_STATS_ENABLED=0"

optout_dropin "Environment=DO_NOT_TRACK=1"
off_views "DO_NOT_TRACK=1 drop-in"
undo_dropin; back_on "DO_NOT_TRACK=1"

optout_dropin $'ExecStart=\nExecStart=/usr/bin/usagestatsd run --disable-usage-stats'
off_views "--disable-usage-stats"
undo_dropin; back_on "--disable-usage-stats"

in_c sed -i '1i disable_usage_stats = true' /etc/usagestatsd/usagestatsd.toml
off_views "disable_usage_stats = true (settings file)"
in_c sed -i '/^disable_usage_stats = true$/d' /etc/usagestatsd/usagestatsd.toml; back_on "settings file"

# Ray's own opt-out, by Ray's user: ~ray/.ray/config.json, read beside the consent file.
in_c runuser -u ray -- env HOME=/home/ray "$RAY_VENV/bin/ray" disable-usage-stats >/dev/null 2>&1
check "ray disable-usage-stats (as ray)" $? "$(in_c cat /home/ray/.ray/config.json 2>&1 | tr -d '\n ')"
off_views "ray disable-usage-stats"
in_c runuser -u ray -- env HOME=/home/ray "$RAY_VENV/bin/ray" enable-usage-stats >/dev/null 2>&1
back_on "ray disable-usage-stats"
# Root's own opt-out, while the service runs as ray (who cannot open /root): systemd reads
# root's ~/.ray/config.json for it (LoadCredential= in the unit).
in_c env HOME=/root "$RAY_VENV/bin/ray" disable-usage-stats >/dev/null 2>&1
check "ray disable-usage-stats (as root, the service runs as $(prop User))" $? \
    "$(in_c cat /root/.ray/config.json 2>&1 | tr -d '\n ')"
off_views "root's ray disable-usage-stats"
in_c env HOME=/root "$RAY_VENV/bin/ray" enable-usage-stats >/dev/null 2>&1
back_on "root's ray disable-usage-stats"
# Opted back in, reports flow again within the same window: so the windows above would
# have seen a report had one been sent.
before=$(reports)
wait_for $((INTERVAL + 5)) bash -c "[ \$('$C' exec '$wd' -- sh -c 'ls /root/received/*.json | wc -l') -gt $before ]"
rc=$?; check "opted back in: a report arrives within $((INTERVAL + 5)) s" $rc "$before before, $(reports) after"
[ $rc = 0 ] || invocation_log | tail -n 15 | sed 's/^/    | /' >&2

# ---------------------------------------------------------------- forget, as root
sid=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["session_id"])' "$wd/ours.json")
out=$(in_c usagestatsd forget --session "$sid" 2>&1); rc=$?
[ $rc = 0 ] && grep -q 'Deletion confirmed' <<<"$out"; check "sudo usagestatsd forget --session ID: confirmed" $? \
    "exit $rc; $(tail -n1 <<<"$out")"
in_c sh -c 'ls /root/received.deleted/*.json >/dev/null 2>&1'; check "the deletion request reached the endpoint" $?
t_forget=$(($(now_ms) - 1000))
owner=$(in_c stat -c %U /var/lib/usagestatsd/history.jsonl)
[ "$owner" = "$(prop User)" ]; check "the history stays the service's after root's forget" $? "owner $owner"
before=$(reports)
wait_for $((INTERVAL + 5)) bash -c "[ \$('$C' exec '$wd' -- sh -c 'ls /root/received/*.json | wc -l') -gt $before ]"
check "after forget: the next report arrives" $?
sleep 1
newest=$(in_c usagestatsd history --json --last 1 2>/dev/null | python3 -c 'import json,sys; r=json.loads(sys.stdin.read() or "{}"); print(r.get("kind"), r.get("time_ms", 0))')
[ "${newest%% *}" = report ] && [ "${newest##* }" -gt "$t_forget" ]
check "after forget: the next report is in the history" $? "newest record: $newest"
! invocation_log | grep '^history.write_failed' >/dev/null; check "journal: no history.write_failed" $?

# ---------------------------------------------------------------- purge
in_c apt-get purge -y -q usagestatsd >"$wd/apt-purge.log" 2>&1; rc=$?
check "apt-get purge usagestatsd" $rc
grep -q 'ray-head.service keeps sending .*systemctl restart ray-head.service' "$wd/apt-purge.log"
check "purge names the Ray still routed to the intake until restarted" $? \
    "$(grep -m1 'usagestatsd: removed' "$wd/apt-purge.log" | cut -c1-140)"
left=$(in_c sh -c 'ls -d /etc/systemd/system/*.d/usagestatsd-* 2>/dev/null; true')
[ -z "$left" ]; check "purge left no drop-in of setup's" $? "${left:-none}"
! in_c systemctl show -p Environment --value ray-head.service | grep RAY_USAGE_STATS_REPORT_URL >/dev/null
check "Ray's unit no longer routes its reporter to the intake" $?

echo
echo "journey: ray start (routed) -> first complete report: $(secs $first_ms)"
finish "$(secs $(($(now_ms) - t0))) in all"
