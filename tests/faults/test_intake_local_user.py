"""A local user against the loopback intake, for real.

Each attack runs in a forked child as uid nobody (tests/support/hostile.py) against a real
`usagestatsd run` process. As nobody nothing more can be imported, so the attacker speaks
HTTP over a plain socket. Where the defence must hold even for a client of Ray's own uid
(a deadline, the cap, coalescing), the same attack also runs as root, which is Ray's uid
here, and as a separate uid that owns the session (RAY_UID).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.hostile import NOBODY, as_user, needs_root, running_as
from tests.support.poll import until
from tests.support.processes import (
    DaemonProcess,
    await_line,
    await_looks,
    intake_env,
    running_daemon,
)
from tests.support.rayside import ray_report, ray_style_copy, recorded_json
from tests.support.servers import ScriptedEndpoint
from usagestatsd.demo import DemoCluster

pytestmark = [needs_root, pytest.mark.slow]

START_MS: int = recorded_json("dash_report_cluster_metadata.json")["data"][
    "sessionStartTimestampMs"
]
RAY_UID = 4242  # Ray run as its own user: the owner of the temp root and the session
SOFT_LIMIT = 1024  # what systemd gives a unit by default
REWRITE_WAIT_S = 2.0  # the put-back of usage_stats.json comes 1 s after a sighting


def post_head(length: int) -> bytes:
    """The request head Ray's reporter (python-requests) sends."""
    return (
        "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: python-requests/2.32.3\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def post(port: int, body: bytes, split: int | None = None) -> str:
    """POST `body` on a plain socket (in two segments if `split`); the status line."""
    with socket.socket() as s:
        s.settimeout(15)
        s.connect(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        data = post_head(len(body)) + body
        cut = len(data) if split is None else len(post_head(len(body))) + split
        s.sendall(data[:cut])
        if cut < len(data):
            time.sleep(0.3)  # the second segment comes later, as over a slow loopback
            s.sendall(data[cut:])
        reply = b""
        while b"\r\n" not in reply:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
        return reply.split(b"\r\n")[0].decode(errors="replace")


def intake_port(daemon: DaemonProcess) -> int:
    """The port the daemon's intake listens on (it was asked for a free one)."""
    url = json.loads(daemon.wait_for("beside_ray.intake_listening"))["url"]
    return int(url.rstrip("/").rsplit(":", 1)[1])


def fds(pid: int) -> int:
    """How many descriptors process `pid` has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def written(pid: int, what: str = "wchar") -> int:
    """Bytes process `pid` has written so far: to files, pipes and sockets (wchar), or to
    the storage layer (write_bytes, which counts fsynced rewrites)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith(f"{what}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {what} in /proc/<pid>/io")


def status_json(env: dict[str, str]) -> dict[str, object]:
    """`usagestatsd status --json` for the daemon's environment."""
    done = subprocess.run(
        [sys.executable, "-m", "usagestatsd", "status", "--json", "--config", "/dev/null"],
        env={**env, "RAY_USAGE_STATS_ENABLED": "1"},
        capture_output=True,
        text=True,
    )
    doc: dict[str, object] = json.loads(done.stdout)
    return doc


def hold_idle(port: int, count: int, head: bytes = b"") -> Callable[[Callable[[str], None]], None]:
    """A child's body: open `count` connections to the intake (sending `head`), hold them."""

    def serve(ready: Callable[[str], None]) -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        held = []
        for _ in range(count):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))  # no wait: beyond the backlog it stays SYN_SENT
            held.append(s)
        if head:
            time.sleep(0.5)
            for s in held:
                with contextlib.suppress(OSError):
                    s.send(head)
        ready(f"holding {len(held)}")
        time.sleep(3600)

    return serve


def lower_fd_limit(pid: int, soft: int = SOFT_LIMIT) -> None:
    """Give the daemon the descriptor soft limit systemd gives a unit."""
    _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))


def own_session_as(uid: int, temp_root: Path, session: Path) -> None:
    """Ray run as `uid`: it owns its temp root and session directory (as Ray makes them)."""
    for path in (temp_root, session, session / "sockets", session / "logs"):
        os.chown(path, uid, uid)


def ray_of_its_own_uid(
    cluster: DemoCluster, temp_root: Path, state_dir: Path, url: str
) -> dict[str, str]:
    """Ray run as RAY_UID and sending by itself so far (its usage_stats.json written): the
    environment of a daemon told that user, whose first cycle comes after a test's POST."""
    own_session_as(RAY_UID, temp_root, cluster.session_dir)
    (cluster.session_dir / "usage_stats.json").write_bytes(ray_style_copy(3))
    return intake_env(
        temp_root,
        state_dir,
        url,
        USAGESTATSD_RAY_USER=str(RAY_UID),  # a session owned by another uid needs this
        RAY_USAGE_STATS_REPORT_INTERVAL_S="5",  # the first cycle comes after the POST
    )


# -- ~1,100 idle connections under a 1024-descriptor limit ---------------------------


@pytest.mark.parametrize("uid", [NOBODY, 0], ids=["nobody", "ray-uid"])
async def test_row4_idle_connections_do_not_exhaust_descriptors(
    demo_session: DemoCluster,
    endpoint: ScriptedEndpoint,
    temp_root: Path,
    state_dir: Path,
    uid: int,
) -> None:
    """1,100 idle connections held: few descriptors, reports on schedule, state saved, no flood."""
    env = intake_env(temp_root, state_dir, endpoint.url, RAY_USAGE_STATS_REPORT_INTERVAL_S="1")
    with running_daemon(env) as daemon:
        pid = daemon.proc.pid
        lower_fd_limit(pid)
        port = intake_port(daemon)
        await until(lambda: len(endpoint.received) >= 1)
        state = state_dir / "state.json"
        with running_as(hold_idle(port, 1100), uid=uid):
            lines_before, sent_before = len(daemon.lines), len(endpoint.received)
            saved_before = state.stat().st_mtime_ns
            peak = 0
            for _ in range(40):  # 8 s of the hold, a report due every second
                peak = max(peak, fds(pid))
                await asyncio.sleep(0.2)
            sent_during = len(endpoint.received) - sent_before
            saved_during = state.stat().st_mtime_ns != saved_before
            flood = daemon.lines[lines_before:]
        assert daemon.proc.poll() is None
    tracebacks = sum("Traceback" in line or "out of system resource" in line for line in flood)
    print(
        f"idle connections ({'nobody' if uid == NOBODY else 'ray uid'}): peak fds {peak}, "
        f"{sent_during} reports and {len(flood)} log lines in 8 s, tracebacks {tracebacks}"
    )
    assert peak < 64
    assert sent_during >= 3
    assert saved_during
    assert tracebacks == 0
    assert sum("intake_accept_failed" in line for line in flood) <= 1
    assert len(flood) <= 8 * 6  # the reports' own lines, plus at most one per kind of refusal


async def test_row4_accept_out_of_descriptors_is_logged_once_a_minute(
    demo_session: DemoCluster, endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """With no descriptor left at all, accept fails: one warning, no traceback per attempt."""
    env = intake_env(temp_root, state_dir, endpoint.url)
    with running_daemon(env) as daemon:
        pid = daemon.proc.pid
        port = intake_port(daemon)
        await until(lambda: len(endpoint.received) >= 1)
        lower_fd_limit(pid, fds(pid))  # not one descriptor more
        before = len(daemon.lines)
        with running_as(hold_idle(port, 50)):
            await asyncio.sleep(5)
            flood = daemon.lines[before:]
        lower_fd_limit(pid)
        await until(lambda: daemon.proc.poll() is not None or len(endpoint.received) >= 3)
        assert daemon.proc.poll() is None
    noise = [line for line in flood if "accept" in line or "Traceback" in line]
    print(f"no descriptor left: {len(noise)} accept lines in 5 s, {len(flood)} in all")
    assert sum("intake_accept_failed" in line for line in noise) == 1
    assert not any("Traceback" in line for line in flood)


# -- a POST from another user is not Ray's reporter ----------------------------------


async def test_row5_post_from_another_user_does_not_cancel_the_stand_down(
    demo_session: DemoCluster, endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """Ray sends by itself; nobody POSTs the session's start time: still standing down."""
    (demo_session.session_dir / "usage_stats.json").write_bytes(ray_style_copy(3))
    env = intake_env(temp_root, state_dir, endpoint.url, USAGESTATSD_LOG_LEVEL="debug")
    body = json.dumps({"session_start_timestamp_ms": START_MS, "seq_number": 0}).encode()
    with running_daemon(env) as daemon:
        port = intake_port(daemon)
        answer = await asyncio.to_thread(as_user, lambda: post(port, body))
        await until(lambda: daemon.count("beside_ray.standing_down") > 0 or bool(endpoint.received))
        await await_looks(daemon, 6)  # six more turns of the loop
        status = status_json(env)
    print(
        f"a POST from nobody: answered {answer!r}; {len(endpoint.received)} reports sent, "
        f"status says {status['beside_ray']}"
    )
    assert endpoint.received == []
    assert (demo_session.session_dir / "usage_stats.json").read_bytes() == ray_style_copy(3)
    beside = status["beside_ray"]
    assert isinstance(beside, dict) and beside["arrangement"] == "direct"


async def test_row5_rays_own_uid_is_still_counted(
    demo_session: DemoCluster, endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """The same POST from the uid that owns the session is Ray's reporter: routed, reported."""
    env = ray_of_its_own_uid(demo_session, temp_root, state_dir, endpoint.url)
    with running_daemon(env) as daemon:
        port = intake_port(daemon)
        body = ray_report()  # read here: as Ray's uid the checkout may be unreadable (/root)
        answer = await asyncio.to_thread(as_user, lambda: post(port, body), RAY_UID)
        assert answer == "HTTP/1.1 200 OK"
        await until(lambda: len(endpoint.received) >= 1)
        assert status_json(env)["beside_ray"]["arrangement"] == "routed"  # type: ignore[index]


# -- POSTs in a loop ------------------------------------------------------------------


def post_loop(port: int, count: int) -> Callable[[], str]:
    """An attacker's body: `count` POSTs of a report, one after the other; the statuses seen."""

    def attack() -> str:
        seen: dict[str, int] = {}
        for seq in range(count):
            try:
                status = post(port, b'{"seq_number": %d}' % seq)
            except OSError as exc:
                status = type(exc).__name__
            seen[status] = seen.get(status, 0) + 1
        return repr(seen)

    return attack


@pytest.mark.parametrize("uid", [NOBODY, 0], ids=["nobody", "ray-uid"])
async def test_row6_post_loop_is_not_a_write_loop(
    demo_session: DemoCluster,
    endpoint: ScriptedEndpoint,
    temp_root: Path,
    state_dir: Path,
    uid: int,
) -> None:
    """5,000 POSTs: a few log lines, usage_stats.json left as it is, little written."""
    env = intake_env(temp_root, state_dir, endpoint.url, RAY_USAGE_STATS_REPORT_INTERVAL_S="3600")
    copy = demo_session.session_dir / "usage_stats.json"
    with running_daemon(env) as daemon:
        pid = daemon.proc.pid
        port = intake_port(daemon)
        await await_line(daemon, "session.found")
        daemon.proc.send_signal(signal.SIGUSR1)  # the first report now, not in 60 s
        await until(lambda: len(endpoint.received) >= 1 and copy.exists())
        await asyncio.sleep(0.5)
        ours = copy.stat()
        lines_before, wrote_before = len(daemon.lines), written(pid)
        disk_before, reports_before = written(pid, "write_bytes"), len(endpoint.received)
        statuses = await asyncio.to_thread(as_user, post_loop(port, 5000), uid)
        await asyncio.sleep(REWRITE_WAIT_S)  # any put-back still due is done by now
        # On a slow machine the daemon's own first scheduled report (60 s after the session
        # appeared) can fall inside the flood: its lines and its copy are not the attack's.
        scheduled = len(endpoint.received) - reports_before
        lines = [ln for ln in daemon.lines[lines_before:] if '"event": "report.' not in ln]
        wrote = written(pid) - wrote_before
        disk = written(pid, "write_bytes") - disk_before
        after = copy.stat()
        last_sent = endpoint.bodies()[-1]["seq_number"]
        assert daemon.proc.poll() is None
    print(
        f"POSTs in a loop ({'nobody' if uid == NOBODY else 'ray uid'}): answers {statuses}; "
        f"{len(lines)} log lines, {wrote} bytes written ({disk} to storage), usage_stats.json "
        f"{'rewritten' if after.st_ino != ours.st_ino else 'untouched'}"
    )
    assert len(lines) <= 6  # report_absorbed's burst (5) and its held_back line at most
    if scheduled == 0:
        assert (after.st_ino, after.st_mtime_ns) == (ours.st_ino, ours.st_mtime_ns)
    else:  # rewritten by that report only: the copy is of our last report
        assert json.loads(copy.read_bytes())["usage_stats"]["seq_number"] == last_sent
    assert wrote < 100_000 * (1 + scheduled)


# -- a request head and no body ---------------------------------------------------------


@pytest.mark.parametrize("uid", [NOBODY, 0], ids=["nobody", "ray-uid"])
async def test_row7_stalled_request_does_not_delay_sigterm(
    demo_session: DemoCluster,
    endpoint: ScriptedEndpoint,
    temp_root: Path,
    state_dir: Path,
    uid: int,
) -> None:
    """`Content-Length: 100` and no body, held open: SIGTERM still stops the daemon at once."""
    env = intake_env(temp_root, state_dir, endpoint.url)
    with running_daemon(env) as daemon:
        port = intake_port(daemon)
        await until(lambda: len(endpoint.received) >= 1)
        with running_as(hold_idle(port, 1, head=post_head(100)), uid=uid):
            await asyncio.sleep(1)
            started = time.monotonic()
            daemon.proc.terminate()
            try:
                code = await asyncio.to_thread(daemon.proc.wait, 70)
            except subprocess.TimeoutExpired:
                code = None
            took = time.monotonic() - started
            # Stopping did not wait for the stalled request: its deadline never came.
            unfreed = daemon.count("no complete request within") == 0
    print(f"head, no body ({'nobody' if uid == NOBODY else 'ray uid'}): SIGTERM took {took:.2f} s")
    assert code == 0
    assert unfreed


# -- a report in two TCP segments -------------------------------------------------------


async def test_row15_report_in_two_segments_is_read_whole(
    demo_session: DemoCluster, endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """Ray's reporter (its own uid) sends its report in two segments: recognised, routed."""
    env = ray_of_its_own_uid(demo_session, temp_root, state_dir, endpoint.url)
    body = ray_report()
    with running_daemon(env) as daemon:
        port = intake_port(daemon)
        answer = await asyncio.to_thread(
            as_user, lambda: post(port, body, split=len(body) // 2), RAY_UID
        )
        await until(
            lambda: len(endpoint.received) >= 1 or daemon.count("beside_ray.standing_down") > 0
        )
        stood_down = daemon.count("beside_ray.standing_down")
    print(f"two segments: {answer!r}, {len(endpoint.received)} reports, stood down {stood_down}")
    assert answer == "HTTP/1.1 200 OK"
    assert stood_down == 0
    assert len(endpoint.received) >= 1
