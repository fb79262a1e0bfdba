"""Another local user tampers with Ray's world-writable temp root and sockets/ directory.

Each attack runs as the real unprivileged uid `nobody` in a forked child
(tests/support/hostile.py) against Ray-like directories (0777, no sticky bit) and a real
`usagestatsd run` process or the daemon's own report cycle. docs/security.md lists them.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.faults.helpers import named, responses_with, run_cycles
from tests.faults.test_trust import (
    DISABLED_METADATA,
    ENABLED_METADATA,
    Serve,
    open_like_ray,
    ray_session,
)
from tests.process.test_dashboard import Dashboards, dashboards
from tests.support.hostile import as_user, needs_root, running_as
from tests.support.poll import until
from tests.support.processes import await_line, daemon_env, running_daemon
from tests.support.servers import ScriptedEndpoint
from usagestatsd.config.settings import Settings
from usagestatsd.demo import DemoCluster, make_session_dir

pytestmark = needs_root
__all__ = ["dashboards", "ray_session"]  # fixtures, used here by name

CHURN_S = 3.0


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
        await asyncio.sleep(1.2)  # the looks of the start are over
        looks_before, reads_before = daemon.count("session.looked"), read_syscalls(pid)
        with running_as(churn(temp_root)):
            await asyncio.sleep(CHURN_S / 2)
            newer = make_session_dir(temp_root)  # Ray starts a new session meanwhile
            open_like_ray(temp_root, newer)
            await asyncio.sleep(CHURN_S / 2)
        await asyncio.sleep(1.2)  # what queued during the last pause is read
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


# -- a dashboard socket renamed away in Ray's 0777 sockets/ ---------------------------------

FORGED_METADATA = ENABLED_METADATA.replace(b"2.60.0", b"6.6.6")


def rename(source: Path, target: Path) -> Callable[[], str]:
    """As nobody: `mv source target` (allowed in a 0777 directory without sticky bit)."""

    def act() -> str:
        os.rename(source, target)
        return "renamed"

    return act


def impostor_renamed(sockets: Path, hidden: str, body: bytes) -> Serve:
    """As nobody: bind `sockets/dash_ReportHead` (free once Ray's is moved away), then
    rename it to `hidden`: the kernel then says it was bound at Ray's path, by nobody."""

    def serve(ready: Callable[[str], None]) -> None:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(sockets / "dash_ReportHead"))
        server.listen(64)
        os.rename(sockets / "dash_ReportHead", sockets / hidden)
        ready("hidden")
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
        reply = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
        while True:
            conn, _ = server.accept()
            conn.recv(65536)
            conn.sendall(reply)
            conn.close()

    return serve


def status_text(env: dict[str, str]) -> str:
    """`usagestatsd status` as an operator runs it, for the daemon's environment."""
    done = subprocess.run(
        [sys.executable, "-m", "usagestatsd", "status", "--config", "/dev/null"],
        env={**env, "PATH": os.environ.get("PATH", "")},
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout + done.stderr


async def test_renamed_report_socket_is_still_read_and_named(
    ray_session: DemoCluster, endpoint: ScriptedEndpoint, state_dir: Path
) -> None:
    """nobody renames dash_ReportHead to .rh in sockets/ (and hides there its own socket,
    bound as dash_ReportHead): reports keep coming with Ray's facts, read from Ray's
    renamed socket; the tampering is one warning in the journal and shows in `status`."""
    sockets = ray_session.session_dir / "sockets"
    temp_root = ray_session.session_dir.parent
    assert as_user(rename(sockets / "dash_ReportHead", sockets / ".rh")) == "renamed"
    env = daemon_env(temp_root, state_dir, endpoint.url)
    planted = impostor_renamed(sockets, ".a", FORGED_METADATA)
    with running_as(planted), running_daemon(env) as daemon:
        await until(lambda: len(endpoint.received) >= 4, timeout=60)
        status = status_text(env)
        warnings = daemon.count("cluster.socket_tampered")
        line = daemon.wait_for("cluster.socket_tampered")
    bodies = endpoint.bodies()
    assert all(b["ray_version"] == "2.60.0" for b in bodies)  # Ray's, never the impostor's
    assert all(b["total_num_cpus"] is not None for b in bodies)
    assert warnings == 1
    assert "dash_ReportHead is missing from sockets/" in line
    assert "used the socket Ray bound as dash_ReportHead" in line
    assert "TAMPERED:" in status and "dash_ReportHead is missing from sockets/" in status
    assert ".rh" not in line  # the name the attacker chose is not echoed


async def test_report_socket_moved_out_of_sockets_is_read_over_the_checked_port(
    make_settings: Callable[..., Settings],
    endpoint: ScriptedEndpoint,
    ray_session: DemoCluster,
    dashboards: Dashboards,
) -> None:
    """nobody moves dash_ReportHead out of sockets/ and hides there its own socket, bound
    as dash_ReportHead (its file even handed to root, so only the kernel's word is left):
    it is refused, and the session's dashboard HTTP port, checked to be its own, answers."""
    sockets = ray_session.session_dir / "sockets"
    outside = ray_session.session_dir / ".rh"
    assert as_user(rename(sockets / "dash_ReportHead", outside)) == "renamed"
    port = dashboards.start(ray_session.session_dir)  # Ray 2.40's answers: told apart
    settings = make_settings({"RAY_USAGE_STATS_REPORT_URL": endpoint.url})
    with running_as(impostor_renamed(sockets, ".a", FORGED_METADATA)):
        os.chown(sockets / ".a", 0, 0, follow_symlinks=False)  # the file passes as root's
        cycle, events = await run_cycles(settings, cycles=3)
    bodies = endpoint.bodies()
    assert len(bodies) == 3 and all(b["ray_version"] == "2.40.0" for b in bodies)
    [warning] = named(events, "cluster.socket_tampered")
    assert f"used dashboard HTTP 127.0.0.1:{port}" in str(warning["problem"])
    origins = cycle.state.origins
    assert origins is not None and origins.metadata == "dashboard HTTP"
    assert origins.tampering == warning["problem"]


async def test_impostor_hidden_in_sockets_is_refused_on_a_disabled_cluster(
    make_settings: Callable[..., Settings], endpoint: ScriptedEndpoint, temp_root: Path
) -> None:
    """A --disable-usage-stats cluster; nobody moves dash_ReportHead out of sockets/ and
    hides there its own socket, bound as dash_ReportHead, claiming usage stats are on:
    nothing is sent."""
    session_dir = make_session_dir(temp_root)
    answers = responses_with()
    answers["dash_ReportHead"]["/api/v0/cluster_metadata"] = DISABLED_METADATA
    cluster = DemoCluster(session_dir, answers)
    await cluster.start()
    open_like_ray(temp_root, session_dir)
    sockets = session_dir / "sockets"
    assert as_user(rename(sockets / "dash_ReportHead", session_dir / ".rh")) == "renamed"
    settings = make_settings({"RAY_USAGE_STATS_REPORT_URL": endpoint.url})
    try:
        with running_as(impostor_renamed(sockets, ".rh", ENABLED_METADATA)):
            _, events = await run_cycles(settings, cycles=2)
    finally:
        await cluster.stop()
    assert endpoint.bodies() == []
    assert named(events, "session.not_reported")


async def test_both_dashboard_sockets_moved_out_are_named(
    make_settings: Callable[..., Settings],
    endpoint: ScriptedEndpoint,
    ray_session: DemoCluster,
    dashboards: Dashboards,
) -> None:
    """nobody moves dash_ReportHead and dash_JobHead out of sockets/ (Ray 2.60's other
    dash_* sockets stay): the checked HTTP port answers, and the tampering is named."""
    sockets = ray_session.session_dir / "sockets"
    for name in ("dash_ReportHead", "dash_JobHead"):
        moved = rename(sockets / name, ray_session.session_dir / f".{name}")
        assert as_user(moved) == "renamed"
    port = dashboards.start(ray_session.session_dir)
    settings = make_settings({"RAY_USAGE_STATS_REPORT_URL": endpoint.url})
    _, events = await run_cycles(settings, cycles=2)
    assert [b["ray_version"] for b in endpoint.bodies()] == ["2.40.0"] * 2
    [warning] = named(events, "cluster.socket_tampered")
    for name in ("dash_ReportHead", "dash_JobHead"):
        assert f"{name} is missing from sockets/; used dashboard HTTP 127.0.0.1:{port}" in str(
            warning["problem"]
        )
