#!/usr/bin/env bash
# Proves systemd/usagestatsd.service under real systemd, with a stand-in daemon
# (tests/e2e/standin/) in place of the real one: the sandbox lets through exactly the I/O the
# daemon needs, the user design works for Ray run by root and by `ray`, and the unit's
# lifecycle (notify, disabled, exit 78, reload, stop, watchdog) behaves. Needs root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
C=$here/container.sh
wd=$(mktemp -d /tmp/usagestatsd-e2e-sandbox.XXXXXX)
trap '"$C" stop "$wd" >/dev/null 2>&1 || true; rm -rf "$wd"' EXIT
failures=0

in_c() { "$C" exec "$wd" -- "$@"; }
pass() { echo "sandbox: ok   $*"; }
fail() { echo "sandbox: FAIL $*" >&2; failures=$((failures + 1)); }
prop() { in_c systemctl show -p "$1" --value usagestatsd; }

# The stand-in's log of the current invocation, once its checks have run N times.
checks() {
    local runs=${1:-1} inv log _
    for _ in $(seq 50); do
        inv=$(prop InvocationID)
        log=$(in_c journalctl -q -o cat --no-pager "_SYSTEMD_INVOCATION_ID=$inv" || true)
        [ "$(grep -c '^checks done' <<<"$log")" -ge "$runs" ] && break
        sleep 0.1
    done
    # Only the last run of the checks.
    awk '/^check /{if (done) {n=0; done=0}; buf[n++]=$0} /^checks done/{done=1} END{for(i=0;i<n;i++) print buf[i]}' <<<"$log"
}

# expect LOG NAME ok|fail [PATTERN]
expect() {
    local line
    line=$(grep "^check $2 " <<<"$1" || true)
    if [[ "$line" == "check $2 $3"* ]] && { [ -z "${4:-}" ] || grep -q -- "$4" <<<"$line"; }; then
        pass "$scenario: $2 $3${4:+ ($4)}"
    else
        fail "$scenario: $2: expected $3${4:+ matching \"$4\"}, got: ${line:-nothing}"
    fi
}

expect_prop() {  # expect_prop NAME VALUE
    local got
    got=$(prop "$1")
    if [ "$got" = "$2" ]; then pass "$scenario: $1=$2"; else fail "$scenario: $1 is '$got', expected '$2'"; fi
}

wait_prop() {  # wait_prop NAME VALUE: up to 5 s
    local _
    for _ in $(seq 50); do [ "$(prop "$1")" = "$2" ] && return 0; sleep 0.1; done
}

restart_with_mode() {
    if [ -n "$1" ]; then in_c sh -c "echo $1 >/etc/standin-mode"; else in_c rm -f /etc/standin-mode; fi
    in_c systemctl reset-failed usagestatsd 2>/dev/null || true
    in_c systemctl restart usagestatsd 2>/dev/null || true
}

"$C" boot "$wd" >/dev/null
"$C" push "$wd" "$here/standin" "$top/systemd/usagestatsd.service" /usr/local/lib/e2e
in_c sh -ec '
    chmod -R a+rX /usr/local/lib/e2e
    install -m 755 /usr/local/lib/e2e/standin/usagestatsd /usr/bin/usagestatsd
    install -m 644 /usr/local/lib/e2e/usagestatsd.service /lib/systemd/system/usagestatsd.service
    mkdir -p /etc/usagestatsd /root/.ray
    echo "# settings" >/etc/usagestatsd/usagestatsd.toml
    echo "{\"usage_stats\": true, \"of\": \"root\"}" >/root/.ray/config.json
    useradd --create-home ray
    mkdir /home/ray/.ray
    echo "{\"usage_stats\": true, \"of\": \"ray\"}" >/home/ray/.ray/config.json
    chown -R ray: /home/ray/.ray
    systemctl daemon-reload'

scenario="root, started before Ray"
in_c systemctl start usagestatsd
expect_prop ActiveState active
expect_prop StatusText "Waiting for a Ray session under /tmp/ray"
log=$(checks 1)
expect "$log" dashboard-socket fail FileNotFoundError
expect "$log" write-state ok /var/lib/usagestatsd/state.json

scenario="root, Ray (root) started after it"
in_c systemd-run --quiet --unit=fake-ray python3 /usr/local/lib/e2e/standin/fake-ray.py
for _ in $(seq 50); do in_c test -S /tmp/ray/session_latest/sockets/dash.sock && break; sleep 0.1; done
in_c systemctl kill -s USR1 usagestatsd
log=$(checks 2)
expect "$log" dashboard-socket ok "HTTP/1.0 200"
expect "$log" write-usage-stats ok 0o644
expect "$log" read-consent ok '"of": "root"'
expect "$log" read-settings ok
expect "$log" write-state ok
expect "$log" http-127.0.0.1 ok "HTTP/1.0 200"
expect "$log" http-::1 ok "HTTP/1.0 200"
expect "$log" resolve-localhost ok
expect "$log" write-etc fail "Read-only file system"
expect "$log" write-usr fail "Read-only file system"

in_c systemctl reload usagestatsd
sleep 0.3
if in_c journalctl -q -o cat -u usagestatsd | grep '^signal.hup' >/dev/null; then pass "$scenario: reload sends SIGHUP"; else fail "$scenario: reload did not reach the daemon"; fi
t0=${EPOCHREALTIME/./}
in_c systemctl stop usagestatsd
ms=$(((${EPOCHREALTIME/./} - t0) / 1000))
if [ "$ms" -lt 2000 ]; then pass "$scenario: stop took ${ms} ms"; else fail "$scenario: stop took ${ms} ms (over 2 s)"; fi

scenario="root, Ray run by ray"
in_c systemctl stop fake-ray
in_c rm -rf /tmp/ray
in_c systemd-run --quiet --unit=fake-ray-as-ray -p User=ray python3 /usr/local/lib/e2e/standin/fake-ray.py
for _ in $(seq 50); do in_c test -S /tmp/ray/session_latest/sockets/dash.sock && break; sleep 0.1; done
in_c systemctl start usagestatsd
log=$(checks 1)
# A capability-less root cannot connect to ray's srwxr-xr-x socket: the drop-in is needed.
expect "$log" dashboard-socket fail PermissionError
expect "$log" write-usage-stats ok

scenario="User=ray drop-in, Ray run by ray"
in_c sh -c 'mkdir -p /etc/systemd/system/usagestatsd.service.d
    printf "[Service]\nUser=ray\n" >/etc/systemd/system/usagestatsd.service.d/user.conf
    systemctl daemon-reload'
in_c systemctl restart usagestatsd
log=$(checks 1)
expect "$log" dashboard-socket ok "HTTP/1.0 200"
expect "$log" write-usage-stats ok 0o644
expect "$log" read-consent ok '"of": "ray"'
expect "$log" write-state ok
expect "$log" http-127.0.0.1 ok
expect "$log" write-etc fail "Read-only file system"
owner=$(in_c stat -c %U /var/lib/usagestatsd /var/lib/usagestatsd/state.json | sort -u)
if [ "$owner" = ray ]; then pass "$scenario: state directory owned by ray"; else fail "$scenario: state directory owned by $owner"; fi
in_c sh -c 'rm /etc/systemd/system/usagestatsd.service.d/user.conf; systemctl daemon-reload'

scenario="disabled, READY=1 then exit 0"
restart_with_mode disabled-ready
wait_prop SubState dead
expect_prop ActiveState inactive
expect_prop Result success
expect_prop NRestarts 0

scenario="disabled, exit 0 without READY=1"
# What the real daemon must NOT do: Type=notify counts it a protocol failure and restarts it.
restart_with_mode disabled-noready
wait_prop SubState auto-restart
expect_prop Result protocol
in_c systemctl stop usagestatsd

scenario="invalid settings, exit 78"
restart_with_mode badconfig
wait_prop SubState failed
expect_prop ExecMainStatus 78
expect_prop SubState failed
expect_prop NRestarts 0

scenario="watchdog not fed"
in_c sh -c 'printf "[Service]\nWatchdogSec=1\n" >/etc/systemd/system/usagestatsd.service.d/watchdog.conf
    systemctl daemon-reload'
restart_with_mode nowatchdog
wait_prop Result watchdog
expect_prop Result watchdog

"$C" stop "$wd"
if [ "$failures" -eq 0 ]; then echo "sandbox: OK"; else echo "sandbox: $failures FAILED" >&2; exit 1; fi
