#!/usr/bin/env bash
# A Debian 12 container with systemd as PID 1, for proving usagestatsd under real systemd.
#
#   container.sh root                    build (once) the cached pristine root; prints its path
#   container.sh boot WORKDIR [--network=private|host]
#                                        boot a fresh copy of it; waits until systemd is up
#   container.sh exec WORKDIR -- CMD...  run CMD inside (all namespaces); its output and exit status
#   container.sh push WORKDIR SRC... DEST   copy host files/directories into the container
#   container.sh stop WORKDIR            power it off (kill if it hangs) and remove the copy
#
# The pristine root lives outside the checkout, in $USAGESTATSD_E2E_CACHE
# (default /var/cache/usagestatsd-e2e/bookworm-root), so it survives between runs on one machine.
# It is rebuilt only when the recipe below changes. Every boot gets its own copy-on-write
# view of it (an overlay mount in WORKDIR, or a full copy where overlayfs is missing), so
# runs never contaminate each other or the cache.
#
# Network: by default the container has its own network namespace with only loopback, so
# its 127.0.0.1 ports never meet the host's (or another run's) and nothing it sends can leave
# the machine. The .deb's dependencies are pre-installed, so `apt-get install ./x.deb` needs
# no network. --network=host shares the host's network instead (apt can then download).
#
# WORKDIR holds: root/ (what the container sees), upper/ work/ (overlay), console.log,
# nspawn.pid, systemd.pid, machine. Needs root.
set -euo pipefail

CACHE=${USAGESTATSD_E2E_CACHE:-/var/cache/usagestatsd-e2e}
PRISTINE=$CACHE/bookworm-root
MIRROR=${USAGESTATSD_E2E_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${USAGESTATSD_E2E_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
BOOT_TIMEOUT=${USAGESTATSD_E2E_BOOT_TIMEOUT:-90}
# What the container has. Changing either list (or RECIPE_VERSION) rebuilds the root.
BASE_PACKAGES=systemd,systemd-sysv,dbus,python3,ca-certificates,procps,netbase
# Debian's packages the usagestatsd .deb depends on: pre-installed so `apt-get install ./x.deb`
# needs no download. Keep in step with packaging/debian/control.
DEB_DEPENDS="python3-aiohttp python3-tenacity python3-structlog python3-daemon python3-yaml debconf"
RECIPE_VERSION=2
RECIPE="v$RECIPE_VERSION bookworm $MIRROR base=$BASE_PACKAGES deps=$DEB_DEPENDS"
INSIDE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

say() { printf 'container.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root"; }

ensure_host_tools() {
    local missing=()
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
    command -v nsenter >/dev/null || missing+=(util-linux)
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing host tools: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Run a command in a root that is not booted (package installation, configuration).
in_root() {
    local dir=$1; shift
    SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 systemd-nspawn -q -D "$dir" --register=no --keep-unit \
        --pipe -E DEBIAN_FRONTEND=noninteractive -E PATH="$INSIDE_PATH" -E LANG=C.UTF-8 "$@"
}

build_root() {
    local tmp=$1
    rm -rf "$tmp"
    mkdir -p "$CACHE/debs"
    say "debootstrap bookworm into $tmp"
    debootstrap --variant=minbase --include="$BASE_PACKAGES" --cache-dir="$CACHE/debs" \
        bookworm "$tmp" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
        || { tail -20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }

    rm -f "$tmp/etc/apt/sources.list"
    cat >"$tmp/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    echo usagestatsd-e2e >"$tmp/etc/hostname"
    # minbase has no /etc/hosts: without it "localhost" does not resolve.
    printf '127.0.0.1\tlocalhost\n127.0.1.1\tusagestatsd-e2e\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' \
        >"$tmp/etc/hosts"
    # Empty: systemd sets a fresh machine id on every boot (so copies differ).
    : >"$tmp/etc/machine-id"
    # Faster, quieter boots: no getty on the piped console, no background apt runs
    # competing for the dpkg lock with the test.
    local unit
    for unit in console-getty.service getty@tty1.service apt-daily.timer apt-daily-upgrade.timer \
        apt-daily.service apt-daily-upgrade.service e2scrub_all.timer e2scrub_reap.service \
        fstrim.timer systemd-networkd-wait-online.service; do
        ln -sf /dev/null "$tmp/etc/systemd/system/$unit"
    done
    # The journal stays in memory: the container is thrown away anyway.
    mkdir -p "$tmp/etc/systemd/journald.conf.d"
    printf '[Journal]\nStorage=volatile\n' >"$tmp/etc/systemd/journald.conf.d/e2e.conf"

    say "installing the .deb's dependencies: $DEB_DEPENDS"
    cp /etc/resolv.conf "$tmp/etc/resolv.conf" 2>/dev/null || true
    in_root "$tmp" sh -ec "apt-get update -qq
        apt-get install -y -qq --no-install-recommends $DEB_DEPENDS >/dev/null
        apt-get clean" >>"$CACHE/debootstrap.log" 2>&1 \
        || { tail -20 "$CACHE/debootstrap.log" >&2; die "apt-get in the new root failed"; }
    echo "$RECIPE" >"$tmp/.usagestatsd-e2e-recipe"
}

cmd_root() {
    need_root
    ensure_host_tools
    mkdir -p "$CACHE"
    # The lock guards the build only. It is released (fd 9 closed) before returning: `boot`
    # would otherwise hand the open, locked fd to systemd-nspawn, and every other boot on
    # the machine would wait until that container stopped.
    exec 9>"$CACHE/lock"
    flock 9
    if [ -d "$PRISTINE" ] && [ "$(cat "$PRISTINE/.usagestatsd-e2e-recipe" 2>/dev/null)" = "$RECIPE" ]; then
        exec 9>&-
        echo "$PRISTINE"
        return 0
    fi
    build_root "$PRISTINE.new"
    rm -rf "$PRISTINE"
    mv "$PRISTINE.new" "$PRISTINE"
    exec 9>&-
    say "pristine root ready"
    echo "$PRISTINE"
}

state() { cat "$1/$2" 2>/dev/null || true; }

# Is PID a live (not zombie) process? kill -0 also succeeds on zombies.
alive() {
    local st
    [ -n "${1:-}" ] || return 1
    st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [ -n "$st" ] && [ "$st" != Z ]
}

# The container's systemd recorded in WORKDIR, if it is still that process.
recorded_systemd() {
    local sd
    sd=$(state "$1" systemd.pid)
    alive "$sd" && [ "$(cat "/proc/$sd/comm" 2>/dev/null)" = systemd ] && [ "$sd" != 1 ] && echo "$sd"
    return 0
}

# PID of the container's systemd (a child of systemd-nspawn), empty if none.
find_systemd() {
    local nspawn=$1
    pgrep -P "$nspawn" -x systemd | head -n1 || true
}

cmd_boot() {
    local wd=${1:?usage: container.sh boot WORKDIR [--network=private|host]}
    shift
    local network=private net_args=(--private-network)
    case "${1:-}" in
        "" | --network=private) ;;
        --network=host) network=host net_args=() ;;
        *) die "unknown boot option: $1" ;;
    esac
    need_root
    wd=$(realpath -m "$wd")
    if alive "$(state "$wd" nspawn.pid)" || [ -n "$(recorded_systemd "$wd")" ]; then
        die "$wd already has a running container; stop it first"
    fi
    cmd_root >/dev/null
    mkdir -p "$wd"
    # Leftovers of a run that died without `stop`.
    if mountpoint -q "$wd/root" 2>/dev/null; then umount "$wd/root" 2>/dev/null || umount -l "$wd/root"; fi
    rm -rf "$wd/root" "$wd/upper" "$wd/work"
    mkdir -p "$wd/root" "$wd/upper" "$wd/work"
    if mount -t overlay overlay -o "lowerdir=$PRISTINE,upperdir=$wd/upper,workdir=$wd/work" "$wd/root" 2>/dev/null; then
        echo overlay >"$wd/copy"
    else
        cp -a --reflink=auto "$PRISTINE/." "$wd/root/"
        echo copy >"$wd/copy"
    fi
    local machine
    machine="e2e-$(basename "$wd" | tr -c 'A-Za-z0-9\n-' - | cut -c1-40)-$$"
    echo "$machine" >"$wd/machine"

    # setsid: the container must outlive this script and not share its process group.
    SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 setsid systemd-nspawn -q -D "$wd/root" -M "$machine" \
        --boot --register=no --keep-unit --console=pipe "${net_args[@]}" \
        </dev/null >"$wd/console.log" 2>&1 &
    local nspawn=$!
    echo "$nspawn" >"$wd/nspawn.pid"

    local deadline=$((SECONDS + BOOT_TIMEOUT)) sd=""
    while [ -z "$sd" ]; do
        alive "$nspawn" || { tail -20 "$wd/console.log" >&2; die "systemd-nspawn exited during boot"; }
        [ $SECONDS -lt $deadline ] || die "no systemd inside the container after ${BOOT_TIMEOUT}s"
        sleep 0.1
        sd=$(find_systemd "$nspawn")
    done
    echo "$sd" >"$wd/systemd.pid"

    # Right after systemd starts, systemctl cannot connect yet: retry until it answers.
    # "offline" is what it prints then ("the manager is not running": no bus yet), so it
    # is retried like no answer; only maintenance and stopping end the wait early.
    local status=""
    while :; do
        status=$(timeout "$((deadline - SECONDS > 1 ? deadline - SECONDS : 1))" \
            "$0" exec "$wd" -- systemctl is-system-running --wait 2>/dev/null) || true
        case "$status" in
            running | degraded) break ;;
            maintenance | stopping) break ;;
        esac
        [ $SECONDS -lt $deadline ] || break
        sleep 0.1
    done
    case "$status" in
        running) ;;
        degraded)
            say "system is degraded; failed units:"
            "$0" exec "$wd" -- systemctl --failed --no-legend >&2 || true ;;
        *)
            tail -20 "$wd/console.log" >&2
            die "systemd did not finish booting (state: ${status:-no answer after ${BOOT_TIMEOUT}s})" ;;
    esac
    echo "nspawn_pid=$nspawn systemd_pid=$sd state=$status network=$network root=$wd/root"
}

cmd_exec() {
    local wd=${1:?usage: container.sh exec WORKDIR -- CMD...}
    shift
    [ "${1:-}" = "--" ] && shift
    [ $# -gt 0 ] || die "usage: container.sh exec WORKDIR -- CMD..."
    local sd
    sd=$(state "$wd" systemd.pid)
    alive "$sd" || die "no running container in $wd"
    exec nsenter -t "$sd" -a -r -w env -i PATH="$INSIDE_PATH" HOME=/root USER=root LOGNAME=root \
        LANG=C.UTF-8 TERM=dumb PAGER=cat SYSTEMD_PAGER=cat SYSTEMD_COLORS=0 \
        DEBIAN_FRONTEND=noninteractive "$@"
}

cmd_push() {
    local wd=${1:?usage: container.sh push WORKDIR SRC... DEST}
    shift
    [ $# -ge 2 ] || die "usage: container.sh push WORKDIR SRC... DEST"
    local dest=${!#} src
    "$0" exec "$wd" -- mkdir -p "$dest"
    for src in "${@:1:$#-1}"; do
        tar -C "$(dirname "$src")" -cf - "$(basename "$src")" | "$0" exec "$wd" -- tar -C "$dest" -xf -
    done
}

cmd_stop() {
    local wd=${1:?usage: container.sh stop WORKDIR}
    need_root
    wd=$(realpath -m "$wd")
    local nspawn sd _
    nspawn=$(state "$wd" nspawn.pid)
    alive "$nspawn" || nspawn=""
    sd=""
    [ -n "$nspawn" ] && sd=$(find_systemd "$nspawn")
    # If systemd-nspawn died, the container's systemd may still run, orphaned.
    [ -n "$sd" ] || sd=$(recorded_systemd "$wd")
    if [ -n "$nspawn$sd" ]; then
        # SIGRTMIN+4 to the container's systemd is "poweroff"; nspawn exits when it does.
        [ -z "$sd" ] || kill -s RTMIN+4 "$sd" 2>/dev/null || true
        for _ in $(seq 100); do alive "$nspawn" || alive "$sd" || break; sleep 0.1; done
        if alive "$nspawn" || alive "$sd"; then
            say "container did not power off within 10s; killing it"
            # Killing a PID namespace's init kills everything in it.
            for pid in $sd $nspawn; do kill -KILL "$pid" 2>/dev/null || true; done
            for _ in $(seq 50); do alive "$nspawn" || alive "$sd" || break; sleep 0.1; done
        fi
    fi
    if mountpoint -q "$wd/root" 2>/dev/null; then
        umount "$wd/root" 2>/dev/null || umount -l "$wd/root"
    fi
    rm -rf "$wd/root" "$wd/upper" "$wd/work" "$wd/nspawn.pid" "$wd/systemd.pid" "$wd/copy" "$wd/machine"
}

main() {
    local cmd=${1:-}
    [ $# -gt 0 ] && shift
    case "$cmd" in
        root) cmd_root "$@" ;;
        boot) cmd_boot "$@" ;;
        exec) cmd_exec "$@" ;;
        push) cmd_push "$@" ;;
        stop) cmd_stop "$@" ;;
        *) usage ;;
    esac
}

main "$@"
