#!/bin/sh
# Runs inside the Debian 12 container (tests/e2e/newcomer.sh pushes it there), as root or as
# an unprivileged user with sudo, with only PATH, HOME and the CA-bundle variables set: what
# a newcomer does with the README. Prints "newcomer: TIME <phase> <seconds>" lines and
# "newcomer: PASS|FAIL <check>" lines; exits 1 if a check failed.
#   newcomer-inside.sh BUNDLE      (a `git bundle` of the checkout's HEAD)
set -u
bundle=$1
failed=0
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
check() {  # check NAME STATUS [DETAIL]
    if [ "$2" = 0 ]; then echo "newcomer: PASS $1${3:+ ($3)}"
    else echo "newcomer: FAIL $1${3:+ ($3)}"; failed=1; fi
}
if [ "$(id -u)" = 0 ]; then as_root=""; who=root; else as_root=sudo; who="$(id -un) (sudo for apt)"; fi
echo "newcomer: as $who, HOME=$HOME, environment: $(env | cut -d= -f1 | sort | tr '\n' ' ')"

# ---- What the README asks to be there: make (and git to clone), installed with apt.
# As an unprivileged user, Debian's python3-venv too: `make` would install it with apt
# itself, which needs root.
t=$(now)
if [ -n "$as_root" ]; then pkgs="make git python3-venv"; else pkgs="make git"; fi
$as_root apt-get update -qq >/tmp/newcomer-apt.$$.log 2>&1 \
    && $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $pkgs \
        >>/tmp/newcomer-apt.$$.log 2>&1
rc=$?
echo "newcomer: TIME apt-prerequisites $(elapsed "$t")"
check "${as_root:+sudo }apt-get install $pkgs" $rc
[ $rc = 0 ] || { tail -20 /tmp/newcomer-apt.$$.log; exit 1; }

t=$(now)
rm -rf "$HOME/usagestatsd"
git -c advice.detachedHead=false clone -q "$bundle" "$HOME/usagestatsd" 2>&1
rc=$?
echo "newcomer: TIME git-clone $(elapsed "$t")"
check "git clone (the checkout's HEAD: committed files only)" $rc
cd "$HOME/usagestatsd" || exit 1

# ---- The README's first command.
t=$(now)
make test >"$HOME/make-test.log" 2>&1
rc=$?
echo "newcomer: TIME make-test $(elapsed "$t")"
tail -n 1 "$HOME/make-test.log" | sed 's/^/  make test: /'
grep -E '^SKIPPED|^FAILED|^ERROR' "$HOME/make-test.log" | sed 's/^/  /' | cut -c1-200 | head -30
check "make test" $rc "$(grep -Eo '[0-9]+ (passed|failed|skipped|error)[a-z]*' "$HOME/make-test.log" | tr '\n' ' ')"
[ $rc = 0 ] || tail -n 40 "$HOME/make-test.log" | sed 's/^/  | /'
if grep -qi 'deprecat' "$HOME/make-test.log"; then
    echo "  deprecation warnings: $(grep -ci 'deprecat' "$HOME/make-test.log") line(s), e.g.:"
    grep -i -m 3 'deprecat' "$HOME/make-test.log" | cut -c1-160 | sed 's/^/  | /'
fi

# ---- The README's second command, for ~15 s, then Ctrl-C (SIGINT to its process group).
t=$(now)
setsid make run >"$HOME/make-run.log" 2>&1 &
pid=$!
sleep 15
reports=$(grep -c '^receiver: got a report' "$HOME/make-run.log")
# What Ctrl-C does: SIGINT to the whole foreground process group (make and the demo).
/bin/kill -s INT -- "-$pid"
# Never hang here: 30 s to stop, then SIGKILL (and the check below fails).
i=0
while kill -0 "$pid" 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
kill -0 "$pid" 2>/dev/null && /bin/kill -s KILL -- "-$pid"
wait "$pid"
rc=$?
echo "newcomer: TIME make-run $(elapsed "$t")"
[ "$reports" -ge 2 ]
check "make run: reports arrive at the demo receiver within 15 s" $? "$reports report(s)"
warned=$(grep -E '^[0-9:]+ +(warning|error|critical) ' "$HOME/make-run.log" | grep -v 'consent.default_enabled' | head -n 3)
[ -z "$warned" ]; check "make run: no warning but the default-enabled notice" $? "$(printf '%s' "${warned:-none}" | cut -c1-160)"
grep -q '^demo: stopped; the receiver got' "$HOME/make-run.log"
check "make run: Ctrl-C stops the demo" $? "$(grep -m1 '^demo: stopped' "$HOME/make-run.log"); make exit $rc"
sleep 1
left=$(pgrep -u "$(id -u)" -af 'usagestatsd' | grep -v -e pgrep -e newcomer-inside || true)
[ -z "$left" ]; check "make run: no process left behind" $? "${left:-none}"
tmp=$(ls -d /tmp/usagestatsd-demo-* 2>/dev/null || true)
[ -z "$tmp" ]; check "make run: its temp directory removed" $? "${tmp:-none}"
[ $failed = 0 ] || grep -v '^receiver: {' "$HOME/make-run.log" | tail -n 20 | cut -c1-200 | sed 's/^/  | /'

# ---- The packages, as docs/packaging.md says: `make deb` and `make rpm` install their own
# build dependencies with apt, so they run as root (the user run has no root shell of its own
# and the README does not ask it to build packages).
if [ -z "$as_root" ]; then
    for target in deb rpm; do
        t=$(now)
        make "$target" >"$HOME/make-$target.log" 2>&1
        rc=$?
        echo "newcomer: TIME make-$target $(elapsed "$t")"
        built=$(ls dist/*."$target" 2>/dev/null | xargs -r -n1 basename | tr '\n' ' ')
        check "make $target on a fresh Debian 12 (its build dependencies installed by make)" $rc "${built:-nothing built}"
        [ $rc = 0 ] || tail -n 20 "$HOME/make-$target.log" | cut -c1-200 | sed 's/^/  | /'
    done
fi
exit $failed
