"""Another local user tampers with Ray's world-writable temp root and sockets/ directory.

Each attack runs as the real unprivileged uid `nobody` in a forked child
(tests/support/hostile.py) against Ray-like directories (0777, no sticky bit) and a real
`usagestatsd run` process or the daemon's own report cycle. docs/security.md lists them.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from tests.faults.test_trust import open_like_ray, ray_session
from tests.support.hostile import needs_root, running_as
from tests.support.poll import until
from tests.support.processes import await_line, daemon_env, running_daemon
from tests.support.servers import ScriptedEndpoint
from usagestatsd.demo import DemoCluster, make_session_dir

pytestmark = needs_root
__all__ = ["ray_session"]  # the fixture, used here by name

CHURN_S = 4.0


def read_syscalls(pid: int) -> int:
    """How many read system calls process `pid` has made so far (/proc/<pid>/io syscr)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("syscr:"):
            return int(line.split()[1])
    raise AssertionError("no syscr in /proc/<pid>/io")


def visible_processes() -> int:
    """How many processes a look at /proc walks over now."""
    return sum(name.isdigit() for name in os.listdir("/proc"))


def churn(root: Path) -> Callable[[Callable[[str], None]], None]:
    """The attacker's body (as nobody): make and remove session-like directories in Ray's
    0777 temp root as fast as it can, until killed."""

    def serve(ready: Callable[[str], None]) -> None:
        ready("churning")
        i = 0
        while True:
            path = root / f"session_churn_{i % 8}"
            try:
                os.mkdir(path)
                os.rmdir(path)
            except OSError:
                pass
            i += 1

    return serve


async def test_temp_root_churn_costs_one_look_a_second(
    ray_session: DemoCluster, endpoint: ScriptedEndpoint, state_dir: Path
) -> None:
    """nobody makes and removes directories in the temp root in a loop: the daemon looks
    at it (walking /proc) at most once a second, and still notices a new session."""
    temp_root = ray_session.session_dir.parent
    env = daemon_env(
        temp_root,
        state_dir,
        endpoint.url,
        RAY_USAGE_STATS_REPORT_INTERVAL_S="3600",  # no report during the churn
        USAGESTATSD_LOG_LEVEL="debug",
    )
    with running_daemon(env) as daemon:
        pid = daemon.proc.pid
        await await_line(daemon, "session.found")
        await asyncio.sleep(1.5)  # the looks of the start are over
        looks_before, reads_before = daemon.count("session.looked"), read_syscalls(pid)
        with running_as(churn(temp_root)):
            await asyncio.sleep(CHURN_S / 2)
            newer = make_session_dir(temp_root)  # Ray starts a new session meanwhile
            open_like_ray(temp_root, newer)
            await asyncio.sleep(CHURN_S / 2)
        await asyncio.sleep(1.5)  # what queued during the last pause is read
        looks = daemon.count("session.looked") - looks_before
        reads = read_syscalls(pid) - reads_before
        found = [e for e in daemon.events() if e.get("event") == "session.found"]
        assert daemon.proc.poll() is None
    processes = visible_processes()
    print(f"temp-root churn for {CHURN_S:g} s: {looks} looks, {reads} read calls")
    # A look reads the command line of each visible process of a trusted uid (two read
    # calls each): what many looks cost shows in the read calls, logged or not.
    assert reads < (CHURN_S + 3) * (2 * processes + 50) + 2000, f"{reads} read calls"
    assert 1 <= looks <= CHURN_S + 3, f"{looks} looks in {CHURN_S:g} s"
    assert str(newer) in str(found[-1]["session_dir"])
