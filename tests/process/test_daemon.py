"""The daemon as a real process: reports flow, counters persist, signals behave."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.support.poll import until, wait_until
from tests.support.processes import (
    NO_DASHBOARD,
    await_line,
    await_looks,
    daemon_env,
    report_then_stop,
    running_daemon,
)
from tests.support.servers import ScriptedEndpoint
from usagestatsd.demo import DemoCluster, make_session_dir, recorded_responses


async def test_reports_flow_and_local_copy(
    demo_session: DemoCluster, endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """Reports arrive with rising seq, a stable session_id, and usage_stats.json follows."""
    with running_daemon(daemon_env(temp_root, state_dir, endpoint.url)) as daemon:
        await until(lambda: len(endpoint.received) >= 3)
        await await_line(daemon, '"seq": 2')
        assert daemon.stop() == 0
    bodies = endpoint.bodies()
    assert [b["seq_number"] for b in bodies[:3]] == [0, 1, 2]
    assert [b["total_success"] for b in bodies[:3]] == [0, 1, 2]
    assert len({b["session_id"] for b in bodies}) == 1
    local = json.loads((demo_session.session_dir / "usage_stats.json").read_bytes())
    assert local["success"] is True and local["error"] is None
    assert local["usage_stats"] in bodies


async def test_recorded_cluster_payload_has_no_identifiers(
    demo_session: DemoCluster, endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """Host name, IP, node ids and paths from the recorded responses never reach a report."""
    with running_daemon(daemon_env(temp_root, state_dir, endpoint.url)):
        await until(lambda: len(endpoint.received) >= 1)
    raw = endpoint.received[0][1].decode()
    for needle in (
        '"vm"',
        "192.0.2.2",
        "b0c1cfbdb03d56a05c0accdd22ad113b",
        "/tmp/",
        "session_2026",
    ):
        assert needle not in raw


async def test_restart_keeps_counters_and_session_id(
    demo_session: DemoCluster, endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """A daemon restart within a session continues the counters and keeps the session_id."""
    env = daemon_env(temp_root, state_dir, endpoint.url)
    await report_then_stop(env, endpoint, 2)
    seen = len(endpoint.received)
    await report_then_stop(env, endpoint, seen + 1)
    bodies = endpoint.bodies()
    assert bodies[seen]["seq_number"] == seen
    assert bodies[seen]["session_id"] == bodies[0]["session_id"]


async def test_new_session_is_followed(
    demo_session: DemoCluster, endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """A cluster restart (new session dir) gets a new session_id and counters from zero."""
    with running_daemon(daemon_env(temp_root, state_dir, endpoint.url)) as daemon:
        await until(lambda: len(endpoint.received) >= 2)
        second = DemoCluster(make_session_dir(temp_root, time.time() + 5), recorded_responses())
        await second.start()
        try:
            first_id = endpoint.bodies()[0]["session_id"]
            await until(lambda: endpoint.bodies()[-1]["session_id"] != first_id)
            await await_line(daemon, "session.found")
        finally:
            await second.stop()
    newest = [b for b in endpoint.bodies() if b["session_id"] != first_id]
    assert newest[0]["seq_number"] == 0 and newest[0]["total_success"] == 0


async def test_endpoint_down_for_a_cycle_is_counted_failed(
    demo_session: DemoCluster, temp_root: Path, state_dir: Path
) -> None:
    """A cycle whose endpoint fails every attempt counts as failed; the next one succeeds."""
    server = ScriptedEndpoint([503, 503, 200])
    await server.start()
    env = daemon_env(
        temp_root,
        state_dir,
        server.url,
        USAGESTATSD_RETRY_MAX_ATTEMPTS="2",
        RAY_USAGE_STATS_REPORT_INTERVAL_S="2",
    )
    try:
        with running_daemon(env) as daemon:
            await until(lambda: len(server.received) >= 3)
            await await_line(daemon, "report.failed")
    finally:
        await server.stop()
    bodies = server.bodies()
    assert bodies[2]["seq_number"] == 1 and bodies[2]["total_failed"] == 1


async def test_sigterm_during_backoff_stops_within_a_second(
    demo_session: DemoCluster, temp_root: Path, state_dir: Path
) -> None:
    """SIGTERM while waiting to retry ends the daemon at once, cleanly."""
    server = ScriptedEndpoint([503])
    await server.start()
    env = daemon_env(
        temp_root,
        state_dir,
        server.url,
        RAY_USAGE_STATS_REPORT_INTERVAL_S="3600",
        USAGESTATSD_RETRY_INITIAL_DELAY_S="60",
        USAGESTATSD_RETRY_MAX_DELAY_S="60",
    )
    try:
        with running_daemon(env) as daemon:
            await await_line(daemon, "daemon.started")
            daemon.proc.send_signal(signal.SIGUSR1)
            await await_line(daemon, "report.retry_scheduled")
            daemon.proc.send_signal(signal.SIGTERM)
            # A generous promise: long before the retry is due (60 s), and so long before
            # systemd's stop timeout would kill it.
            await until(lambda: daemon.proc.poll() is not None, 20, "the daemon to exit")
            assert daemon.proc.returncode == 0
            await await_line(daemon, "daemon.stopped")
    finally:
        await server.stop()


async def test_sighup_changes_nothing_and_says_so(
    demo_session: DemoCluster, endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """SIGHUP is logged as ignored (settings are read at start) and reporting goes on."""
    with running_daemon(daemon_env(temp_root, state_dir, endpoint.url)) as daemon:
        await await_line(daemon, "daemon.started")
        daemon.proc.send_signal(signal.SIGHUP)
        line = await await_line(daemon, "daemon.reload_ignored")
        count = len(endpoint.received)
        await until(lambda: len(endpoint.received) > count)
        assert daemon.proc.poll() is None
    assert "restart" in line


async def test_sd_notify_ready_status_watchdog_stopping(
    demo_session: DemoCluster, endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """Under a notify socket: READY=1 with STATUS, WATCHDOG=1 pings, STOPPING=1 at the end."""
    notify_path = temp_root.parent / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.setblocking(False)
    messages: list[str] = []

    def drain() -> int:
        while True:
            try:
                messages.append(sock.recv(4096).decode())
            except BlockingIOError:
                return len(messages)

    env = daemon_env(
        temp_root, state_dir, endpoint.url, NOTIFY_SOCKET=str(notify_path), WATCHDOG_USEC="200000"
    )
    try:
        with running_daemon(env) as daemon:
            await until(lambda: len(endpoint.received) >= 2)
            await until(lambda: drain() > 0 and any("Last report" in m for m in messages))
            assert daemon.stop() == 0
        drain()
    finally:
        sock.close()
    assert messages[0].startswith("READY=1")
    assert "STATUS=Waiting for a Ray session" in messages[0]
    assert sum(m == "WATCHDOG=1" for m in messages) >= 2
    assert any(m.startswith("STATUS=Last report") and "ok (seq" in m for m in messages)
    assert messages[-1].startswith("STOPPING=1")


async def test_no_session_waits_quietly(
    temp_root: Path, state_dir: Path, endpoint: ScriptedEndpoint
) -> None:
    """Without a session: one session.missing event, no reports, no error loop."""
    env = daemon_env(temp_root, state_dir, endpoint.url, USAGESTATSD_LOG_LEVEL="debug")
    with running_daemon(env) as daemon:
        await await_line(daemon, "session.missing")
        await await_looks(daemon, 4)
        assert daemon.count("session.missing") == 1
        assert daemon.proc.poll() is None
    assert endpoint.received == []


def _removed(path: Path) -> bool:
    shutil.rmtree(path, ignore_errors=True)
    return not path.exists()


async def test_session_deleted_mid_run(
    demo_session: DemoCluster, endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """The session directory vanishing is noticed; the daemon keeps running and waits."""
    with running_daemon(daemon_env(temp_root, state_dir, endpoint.url)) as daemon:
        await until(lambda: len(endpoint.received) >= 1)
        await demo_session.stop()
        # The daemon may be writing usage_stats.json into it at this moment: remove
        # until it is gone, as a `rm -rf` racing a writer would be repeated.
        await until(lambda: _removed(demo_session.session_dir))
        await await_line(daemon, "session.missing")
        assert daemon.proc.poll() is None


async def test_sigusr1_reports_now(
    demo_session: DemoCluster, endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """SIGUSR1 sends a report at once, without waiting for the hourly slot."""
    env = daemon_env(temp_root, state_dir, endpoint.url, RAY_USAGE_STATS_REPORT_INTERVAL_S="3600")
    with running_daemon(env) as daemon:
        await await_line(daemon, "session.found")
        daemon.proc.send_signal(signal.SIGUSR1)
        await until(lambda: len(endpoint.received) == 1, 10)


def test_daemonize_with_pidfile(temp_root: Path, state_dir: Path, tmp_path: Path) -> None:
    """--daemonize detaches (exit 0 at once), writes the pid file, and SIGTERM removes it."""
    pidfile = tmp_path / "usagestatsd.pid"
    env = daemon_env(temp_root, state_dir, "http://127.0.0.1:9/")
    full = {**os.environ, **env}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "usagestatsd",
            "run",
            "--config",
            "/dev/null",
            "--daemonize",
            "--pidfile",
            str(pidfile),
            "--log-format",
            "json",
        ],
        env=full,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "log").open("wb"),  # the detached child keeps it open
        timeout=30,
    )
    pid: int | None = None
    try:
        assert result.returncode == 0
        pid = _wait_for_pid(pidfile)
        os.kill(pid, 0)  # alive, detached
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not pidfile.exists(), 30, "the daemon removing its pid file")
    finally:
        # Never leave a detached daemon behind, whatever failed above.
        _kill_if_still_ours(pid, pidfile)


def _kill_if_still_ours(pid: int | None, pidfile: Path) -> None:
    """SIGKILL the daemon of this test by its pid (from the pid file if not read yet), and
    only while that pid still runs our command line: never a process that reused it."""
    if pid is None:
        text = pidfile.read_text() if pidfile.exists() else ""
        if not text.strip().isdigit():
            return
        pid = int(text)
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return  # gone already
    if str(pidfile).encode() in cmdline.split(b"\0"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _wait_for_pid(pidfile: Path) -> int:
    """The pid in a pid file, once it has been written completely."""

    def text() -> str:
        return pidfile.read_text() if pidfile.exists() else ""

    wait_until(lambda: text().strip().isdigit(), 30, f"a pid in {pidfile}")
    return int(text())


async def test_sigusr1_without_session_does_not_spin(temp_root: Path, state_dir: Path) -> None:
    """SIGUSR1 with no session is logged and dropped; the daemon stays idle (no busy loop)."""
    env = daemon_env(temp_root, state_dir, "http://127.0.0.1:9/", USAGESTATSD_LOG_LEVEL="debug")
    with running_daemon(env) as daemon:
        await await_line(daemon, "session.missing")
        daemon.proc.send_signal(signal.SIGUSR1)
        await await_line(daemon, "report.request_ignored")
        before, started = _cpu_seconds(daemon.proc.pid), time.monotonic()
        await await_looks(daemon, 2)  # the loop went on turning: two more looks
        # Not a timing test: an idle loop uses ~0 CPU, a spinning one all of the time taken.
        spent = _cpu_seconds(daemon.proc.pid) - before
        assert spent < (time.monotonic() - started) / 2


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_stopped_cluster_is_one_info_line(
    temp_root: Path, state_dir: Path, endpoint: ScriptedEndpoint
) -> None:
    """A session whose dashboard is gone (head stopped): one info line, no warning per socket."""
    make_session_dir(temp_root)
    env = daemon_env(
        temp_root,
        state_dir,
        endpoint.url,
        USAGESTATSD_DASHBOARD_ADDRESS=NO_DASHBOARD,
        USAGESTATSD_LOG_LEVEL="debug",
    )
    with running_daemon(env) as daemon:
        line = await await_line(daemon, "session.not_reported")
        await await_looks(daemon, 3)
        assert daemon.count("session.not_reported") == 1
        assert daemon.count("cluster.source_failed") == 0
    assert '"level": "info"' in line and "not running" in line
    assert endpoint.received == []


def test_sigterm_stops_even_when_stderr_is_gone(temp_root: Path, state_dir: Path) -> None:
    """With its log pipe's reader gone (EPIPE on every write), SIGTERM still stops the daemon.

    Without PYTHONUNBUFFERED (a fresh machine lacks it), as the daemon runs under systemd.
    """
    env = {**os.environ, **daemon_env(temp_root, state_dir, "http://127.0.0.1:9/")}
    env.pop("PYTHONUNBUFFERED", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "usagestatsd",
            "run",
            "--config",
            "/dev/null",
            "--log-format",
            "json",
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        assert b"daemon.started" in proc.stdout.readline() + proc.stdout.readline()
        proc.stdout.close()  # the reader goes away: every later log write fails with EPIPE
        proc.send_signal(signal.SIGHUP)  # a log write that fails must not kill the daemon
        time.sleep(0.5)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
