#!/usr/bin/env bash
# `make newcomer`: the README's path on a really fresh Debian 12, twice: as root, and as an
# unprivileged user with sudo. Each run boots a fresh container (tests/e2e/container.sh, with
# the host's network so that apt and pip reach the registries), puts in the CA bundle this
# host reaches them through ($SSL_CERT_FILE or $PIP_CERT), `git clone`s the checkout's HEAD
# (only committed files; git and make are installed with apt first, as the README says),
# then runs `make test`, and `make run` for 15 s, checking that reports arrive and that
# Ctrl-C leaves nothing behind, and as root `make deb` and `make rpm`, whose build
# dependencies they install themselves (tests/e2e/newcomer-inside.sh). Prints the time of each
# phase; exits 1 if anything failed. Needs root. Logs in build/newcomer/.
#   tests/e2e/newcomer.sh [root|user]...    (default: root user)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
C=$here/container.sh
logs=$top/build/newcomer
[ "$(id -u)" = 0 ] || { echo "newcomer: FAIL: must run as root (containers)" >&2; exit 1; }
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(root user)
ca=${SSL_CERT_FILE:-${PIP_CERT:-}}
mkdir -p "$logs"
work=$(mktemp -d /tmp/usagestatsd-newcomer.XXXXXX)
wd=$work/container
trap '"$C" stop "$wd" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

now_s() { echo "${EPOCHREALTIME}"; }
since() { awk -v a="$1" -v b="$(now_s)" 'BEGIN { printf "%.1f", b - a }'; }

# The checkout's HEAD as a bundle: what `git clone` of it gives, without this worktree's
# uncommitted or untracked files.
git -C "$top" bundle create -q "$work/usagestatsd.bundle" HEAD
echo "newcomer: cloning $(git -C "$top" rev-parse --short HEAD) ($(git -C "$top" log -1 --format=%s | cut -c1-60))"

failed=0 summary=()
for who in "${runs[@]}"; do
    t0=$(now_s)
    "$C" boot "$wd" --network=host >/dev/null
    in_c() { "$C" exec "$wd" -- "$@"; }
    # The CA this host reaches the registries through, trusted system-wide in the container;
    # PIP_CERT and SSL_CERT_FILE then point at the container's own bundle, which holds it.
    if [ -n "$ca" ] && [ -f "$ca" ]; then
        "$C" push "$wd" "$ca" /usr/local/share/ca-certificates/
        in_c sh -ec "cd /usr/local/share/ca-certificates && mv '$(basename "$ca")' host-registries.crt
            update-ca-certificates >/dev/null 2>&1"
    fi
    bundle_env=(PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt)
    "$C" push "$wd" "$work/usagestatsd.bundle" "$here/newcomer-inside.sh" /opt/newcomer
    in_c chmod -R a+rX /opt/newcomer
    log=$logs/$who.log
    case $who in
        root)
            in_c env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
                "${bundle_env[@]}" sh /opt/newcomer/newcomer-inside.sh /opt/newcomer/usagestatsd.bundle \
                >"$log" 2>&1 && rc=0 || rc=$? ;;
        user)
            # An ordinary account that may use sudo (the README's apt step); sudo itself is the
            # machine administrator's, installed here as root.
            in_c sh -ec 'apt-get update -qq && apt-get install -y -qq --no-install-recommends sudo >/dev/null
                useradd --create-home --shell /bin/bash newcomer
                echo "newcomer ALL=(ALL) NOPASSWD: ALL" >/etc/sudoers.d/newcomer
                chmod 0440 /etc/sudoers.d/newcomer' >"$log" 2>&1
            in_c runuser -u newcomer -- env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/home/newcomer \
                "${bundle_env[@]}" sh -c 'cd && sh /opt/newcomer/newcomer-inside.sh /opt/newcomer/usagestatsd.bundle' \
                >>"$log" 2>&1 && rc=0 || rc=$? ;;
        *) echo "newcomer: unknown run '$who' (root or user)" >&2; exit 2 ;;
    esac
    "$C" stop "$wd" >/dev/null 2>&1 || true
    took=$(since "$t0")
    grep -E '^newcomer: (PASS|FAIL|TIME)|^  ' "$log" | sed "s/^/[$who] /"
    status=PASS
    [ "$rc" = 0 ] || { status=FAIL; failed=$((failed + 1)); }
    phases=$(sed -n 's/^newcomer: TIME \([a-z-]*\) \([0-9.]*\)$/\1 \2s/p' "$log" | paste -sd, - | sed 's/,/, /g')
    summary+=("$(printf '%-4s %-5s %6ss in all (%s)' "$status" "$who" "$took" "$phases")")
done

echo
echo "newcomer summary ($(nproc) cores; logs in $logs):"
printf '  %s\n' "${summary[@]}"
if [ "$failed" = 0 ]; then echo "newcomer: PASS"; else echo "newcomer: FAIL ($failed run(s))" >&2; exit 1; fi
