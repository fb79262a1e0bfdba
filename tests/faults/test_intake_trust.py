"""A local user against the intake's trust in its clients and its hold on its port, for real.

Each attack runs in a forked child as uid nobody (tests/support/hostile.py) against a real
`usagestatsd run` process. Ray's uid here is root, the owner of the demo session:

- a forged report from a socket bound at the port of a root listener of the other family,
  closed at once, must not pass for root's (the uid is the client socket's own, never a
  listener's);
- a port taken by another user while the daemon is down: the taker is named, the daemon
  reports rather than stands down on Ray's report that went there; and with systemd's
  socket (socket activation) the port is never free to take;
- thousands of loopback connections held, connects to the intake in a loop: Ray's own report
  is still answered within Ray's 10 s timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.test_intake_local_user import intake_port, post, post_head, status_json
from tests.support.hostile import NOBODY, as_user, needs_root, running_as
from tests.support.poll import until
from tests.support.processes import (
    DaemonProcess,
    await_looks,
    daemon_env,
    end_process,
    intake_env,
    running_daemon,
    without_our_settings,
)
from tests.support.rayside import ray_report, ray_style_copy, recorded_json
from tests.support.servers import ScriptedEndpoint
from usagestatsd.demo import DemoCluster

pytestmark = [needs_root]

START_MS: int = recorded_json("dash_report_cluster_metadata.json")["data"][
    "sessionStartTimestampMs"
]
RAY_TIMEOUT_S = 10.0  # Ray's reporter gives up on a report after 10 s
AHEAD = 30  # connections queued before the forged one
INFLATE = 1000  # loopback connections held meanwhile (a busy host)
HELD_CONNECTIONS = 5000  # each is two sockets in the kernel's tables
FLOOD_PER_S = 500  # connects to the intake a second, at most
FLOOD_OPEN = 100  # of those, left open at a time


def forged_body() -> bytes:
    """A report naming this session, as Ray's reporter would send it."""
    return json.dumps({"session_start_timestamp_ms": START_MS, "seq_number": 0}).encode()


def free_port(family: socket.AddressFamily = socket.AF_INET) -> int:
    """A port nobody listens on now (of either family)."""
    with socket.socket(family) as s:
        s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def root_listener(family: socket.AddressFamily) -> Iterator[int]:
    """A root process listening on the wildcard address of one family only; its port."""
    with socket.socket(family) as s:
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(("::", 0))
        else:
            s.bind(("0.0.0.0", 0))
        s.listen(8)
        yield int(s.getsockname()[1])


def send_and_close(
    family: socket.AddressFamily, bound: tuple[str, int], intake: tuple[str, int]
) -> Callable[[], str]:
    """An attacker's body: from `bound`, POST a report naming the session, close at once.

    Loopback connections held and a few sent first make the forged one wait in the intake's
    queue, so that it is closed before the intake looks at who sent it (as on a busy host)."""
    body = forged_body()

    def attack() -> str:
        # Bound first: the held connections' ephemeral ports could otherwise take it.
        forged = socket.socket(family)
        forged.bind(bound)
        held = hold(INFLATE)
        ahead = []
        for _ in range(AHEAD):
            s = socket.socket(family)
            s.connect(intake)
            ahead.append(s)
        with forged:
            forged.connect(intake)
            forged.sendall(post_head(len(body)) + body)
        for s in ahead + held:
            s.close()
        return "sent"

    return attack


def hold(count: int) -> list[socket.socket]:
    """`count` loopback connections to a listener of our own (plain sockets: as nobody, no
    codec may be imported), both ends held."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = socket.create_server(("127.0.0.1", 0), backlog=4096)
    held = [server]
    for _ in range(count):
        client = socket.socket()
        client.connect(server.getsockname())
        held += [client, server.accept()[0]]
    return held


def post_to(family: socket.AddressFamily, address: tuple[str, int], body: bytes) -> str:
    """POST `body` to `address` on a plain socket; the status line of the answer."""
    with socket.socket(family) as s:
        s.settimeout(60)
        s.connect(address)
        s.sendall(post_head(len(body)) + body)
        return s.recv(4096).split(b"\r\n")[0].decode(errors="replace")


def ray_sends_by_itself(session_dir: Path) -> None:
    """Ray's reporter sent this session's report itself: its copy of usage_stats.json."""
    (session_dir / "usage_stats.json").write_bytes(ray_style_copy(3))


# -- a listener of the other family does not vouch for a closed client ------------------------


@pytest.mark.parametrize(
    "intake_host,family,root_family",
    [
        ("127.0.0.1", socket.AF_INET, socket.AF_INET6),
        ("::1", socket.AF_INET6, socket.AF_INET),
    ],
    ids=["v4-client-v6-root", "v6-client-v4-root"],
)
async def test_forged_report_from_beside_a_root_listener_is_refused(
    demo_session: DemoCluster,
    endpoint: ScriptedEndpoint,
    temp_root: Path,
    state_dir: Path,
    intake_host: str,
    family: socket.AddressFamily,
    root_family: socket.AddressFamily,
) -> None:
    """nobody binds the port of a root listener of the other family, POSTs and closes: refused."""
    ray_sends_by_itself(demo_session.session_dir)
    where = f"[{intake_host}]:0" if ":" in intake_host else f"{intake_host}:0"
    env = daemon_env(
        temp_root,
        state_dir,
        endpoint.url,
        USAGESTATSD_RAY_INTAKE=where,
        USAGESTATSD_LOG_LEVEL="debug",
    )
    with running_daemon(env) as daemon, contextlib.ExitStack() as listeners:
        intake = (intake_host, intake_port(daemon))
        tries = []
        for _ in range(3):  # a fresh port each time: the last one's closed end lingers
            port = listeners.enter_context(root_listener(root_family))  # open to the end
            attack = send_and_close(family, (intake_host, port), intake)
            tries.append(await asyncio.to_thread(as_user, attack))
        # The intake accepts in order: once a last client of nobody has its answer, every
        # forged report before it has been looked at.
        last = await asyncio.to_thread(as_user, lambda: post_to(family, intake, b"{}"))
        await until(lambda: daemon.count("beside_ray.standing_down") > 0 or bool(endpoint.received))
        await await_looks(daemon, 4)  # four more turns of the loop
        status = status_json(env)
    beside = status["beside_ray"]
    print(
        f"forged beside a root listener: {tries}; {len(endpoint.received)} reports sent, "
        f"status says {beside}"
    )
    assert tries == ["sent"] * 3
    assert last == "HTTP/1.1 403 Forbidden"
    assert endpoint.received == []
    assert isinstance(beside, dict) and beside["arrangement"] == "direct"


# -- the intake's port taken while the daemon is down ---------------------------------------------


def fake_intake(port: int) -> Callable[[Callable[[str], None]], None]:
    """A child's body: listen on the intake's port, answer every request 200 (as ours would)."""

    def serve(ready: Callable[[str], None]) -> None:
        server = socket.create_server(("127.0.0.1", port))
        ready("listening")
        while True:
            conn = server.accept()[0]
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    return serve


def ray_reports_to(port: int, session_dir: Path) -> str:
    """Ray's reporter routed to the intake address: POST there, then write its copy."""
    answer = post(port, ray_report(3))
    ray_sends_by_itself(session_dir)  # Ray writes usage_stats.json right after its POST
    return answer


async def test_taken_port_is_named_and_ray_report_there_is_no_stand_down(
    demo_session: DemoCluster, endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """nobody holds the intake's port: the daemon names uid 65534 and reports all the same."""
    port = free_port()
    env = daemon_env(temp_root, state_dir, endpoint.url, USAGESTATSD_RAY_INTAKE=f"127.0.0.1:{port}")
    with running_as(fake_intake(port)), running_daemon(env) as daemon:
        line = json.loads(daemon.wait_for("beside_ray.intake_unavailable"))
        answer = await asyncio.to_thread(ray_reports_to, port, demo_session.session_dir)
        await until(lambda: daemon.count("beside_ray.standing_down") > 0 or bool(endpoint.received))
        stood_down = daemon.count("beside_ray.standing_down")
        status = status_json(env)
    beside = status["beside_ray"]
    print(
        f"port taken: {line.get('problem')!r}, held_by_uid {line.get('held_by_uid')}; Ray's report "
        f"there answered {answer!r}; {len(endpoint.received)} reports, stood down {stood_down}; "
        f"status {beside}"
    )
    assert answer == "HTTP/1.1 200 OK"  # the taker answered Ray
    assert line.get("held_by_uid") == NOBODY
    assert stood_down == 0
    assert len(endpoint.received) >= 1
    assert isinstance(beside, dict) and not beside["intake_listening"]
    assert f"uid {NOBODY}" in str(beside["intake_problem"])


def start_activated(env: dict[str, str], listener: socket.socket) -> DaemonProcess:
    """`usagestatsd run` given `listener` as systemd gives it (fd 3, LISTEN_PID/FDS/FDNAMES)."""
    fd = listener.fileno()
    # What systemd does between fork and exec: the socket at fd 3, LISTEN_PID the pid.
    script = (
        f"import os, sys; os.dup2({fd}, 3); os.close({fd}); "
        "os.environ['LISTEN_PID'] = str(os.getpid()); os.execv(sys.executable, sys.argv[1:])"
    )
    cmd = [sys.executable, "-c", script, sys.executable, "-m", "usagestatsd", "run"]
    activation = {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "intake"}
    proc = subprocess.Popen(
        [*cmd, "--log-format", "json"],
        env={**without_our_settings(), **env, **activation},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        pass_fds=(fd,),
    )
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.append(raw.decode(errors="replace").rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    return DaemonProcess(proc, lines)


def try_to_take(port: int) -> str:
    """An attacker's body: bind and listen on the intake's port; what happened."""
    try:
        with socket.create_server(("127.0.0.1", port)):
            return "taken"
    except OSError as exc:
        return os.strerror(exc.errno or 0)


async def test_socket_activated_port_cannot_be_taken_across_a_restart(
    demo_session: DemoCluster, endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """systemd holds the port: nobody cannot take it while the daemon restarts, Ray is heard."""
    env = intake_env(temp_root, state_dir, endpoint.url, RAY_USAGE_STATS_REPORT_INTERVAL_S="5")
    with socket.create_server(("127.0.0.1", 0), backlog=64) as listener:
        port = listener.getsockname()[1]
        env["USAGESTATSD_RAY_INTAKE"] = f"127.0.0.1:{port}"
        first = start_activated(env, listener)
        try:
            first.wait_for("beside_ray.intake_listening")
        finally:
            end_process(first.proc, 5)
        taken = await asyncio.to_thread(as_user, lambda: try_to_take(port))
        ray_sends_by_itself(demo_session.session_dir)
        second = start_activated(env, listener)
        try:
            listening = json.loads(second.wait_for("beside_ray.intake_listening"))
            answer = await asyncio.to_thread(post, port, ray_report(3))
            await until(lambda: bool(endpoint.received) or second.count("standing_down") > 0)
            status = status_json(env)
        finally:
            end_process(second.proc, 5)
    beside = status["beside_ray"]
    print(
        f"socket activation: nobody's bind during the restart: {taken!r}; the restarted "
        f"daemon listens on {listening.get('socket')}'s socket; Ray's report answered "
        f"{answer!r}; {len(endpoint.received)} reports; arrangement {beside}"
    )
    assert taken != "taken"
    assert answer == "HTTP/1.1 200 OK"
    assert len(endpoint.received) >= 1
    assert isinstance(beside, dict) and beside["arrangement"] == "routed"


# -- many sockets on the machine, connects in a loop ------------------------------------------


def hold_and_loop(
    intake: int, count: int, seconds: float
) -> Callable[[Callable[[str], None]], None]:
    """A child's body: hold `count` loopback connections (to its own listener), then connect
    to the intake over and over (at most FLOOD_PER_S a second, FLOOD_OPEN left open at a
    time), for at most `seconds`."""

    def serve(ready: Callable[[str], None]) -> None:
        held = hold(count)
        ready(f"holding {len(held) // 2}")
        pending: list[socket.socket] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", intake))
            pending.append(s)
            if len(pending) > FLOOD_OPEN:
                pending.pop(0).close()
            time.sleep(1 / FLOOD_PER_S)

    return serve


def ray_posts(port: int) -> str:
    """Ray's reporter: connect, POST, wait for the answer for at most Ray's own 10 s."""
    body = ray_report(0)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=RAY_TIMEOUT_S) as s:
            s.settimeout(max(0.1, RAY_TIMEOUT_S))
            started = time.monotonic()
            s.sendall(post_head(len(body)) + body)
            reply = b""
            while b"\r\n" not in reply and time.monotonic() - started < RAY_TIMEOUT_S:
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
        return reply.split(b"\r\n")[0].decode(errors="replace") or "no answer"
    except TimeoutError:
        return "timed out"
    except OSError as exc:
        return type(exc).__name__


@pytest.mark.slow
async def test_ray_is_answered_while_many_sockets_are_held_and_connects_loop(
    demo_session: DemoCluster, endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """5,000 connections held, connects in a loop: each of Ray's reports is answered 200."""
    env = intake_env(temp_root, state_dir, endpoint.url, RAY_USAGE_STATS_REPORT_INTERVAL_S="3600")
    with running_daemon(env) as daemon:
        port = intake_port(daemon)
        with running_as(hold_and_loop(port, HELD_CONNECTIONS, 60)):
            await asyncio.sleep(1)  # the loop fills the intake's queue
            answers = [await asyncio.to_thread(ray_posts, port) for _ in range(3)]
        assert daemon.proc.poll() is None
    print(f"{HELD_CONNECTIONS} held and a connect loop: Ray's reports answered {answers}")
    assert answers == ["HTTP/1.1 200 OK"] * 3


async def test_disabled_daemon_leaves_no_connection_on_systemd_s_socket(
    endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """Collection disabled: the waiting connection is closed, so systemd does not start the
    service again and again for it (and then give up the socket and its port)."""
    env = intake_env(temp_root, state_dir, endpoint.url, RAY_USAGE_STATS_ENABLED="0")
    with socket.create_server(("127.0.0.1", 0), backlog=64) as listener:
        port = listener.getsockname()[1]
        env["USAGESTATSD_RAY_INTAKE"] = f"127.0.0.1:{port}"
        with socket.create_connection(("127.0.0.1", port)) as waiting:
            daemon = start_activated(env, listener)
            code = await asyncio.to_thread(daemon.proc.wait, 30)
            listener.setblocking(False)
            with pytest.raises(BlockingIOError):
                listener.accept()
            waiting.settimeout(5)
            assert waiting.recv(1) == b""  # closed by the daemon, unanswered
    assert code == 0
