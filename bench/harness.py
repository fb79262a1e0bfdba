"""Processes the benchmark starts: the daemon, the fixture, notify sockets, and their cleanup.

Every process started here is remembered by its Popen and stopped by its pid at the end;
nothing is ever stopped by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
DAEMON = Path(PY).parent / "usagestatsd"

_started: list[subprocess.Popen[str]] = []


def spawn(argv: list[str], **kwargs: object) -> subprocess.Popen[str]:
    """Popen that is remembered, so `cleanup()` can stop it."""
    proc: subprocess.Popen[str] = subprocess.Popen(argv, text=True, **kwargs)  # type: ignore[call-overload]
    _started.append(proc)
    return proc


def stop(proc: subprocess.Popen[str], timeout: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL if it does not go; returns the exit status."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


async def seconds_to_exit(proc: subprocess.Popen[Any], limit_s: float = 120.0) -> float:
    """SIGTERM, then poll until `proc` exits (or `limit_s` passes): the seconds it took."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    while proc.poll() is None and time.monotonic() - started < limit_s:
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def cleanup() -> None:
    """Stop every process this benchmark started that is still running."""
    for proc in _started:
        stop(proc, 5.0)


class NotifySocket:
    """A real $NOTIFY_SOCKET: an AF_UNIX datagram socket; every message kept with its time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            with self._cond:
                self.messages.append((time.monotonic(), data.decode(errors="replace")))
                self._cond.notify_all()

    def wait_for(self, field: str, timeout: float, after: float = 0.0) -> float:
        """The time the first message containing `field` arrived after `after`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for when, text in self.messages:
                    if when >= after and field in text.splitlines():
                        return when
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"no {field} on {self.path} within {timeout:g}s")
                self._cond.wait(left)

    def count(self, field: str, start: float, end: float) -> int:
        """How many messages containing `field` arrived in [start, end)."""
        with self._cond:
            return sum(
                1 for when, text in self.messages if start <= when < end and field in text.split()
            )

    def close(self) -> None:
        """Stop listening."""
        self.sock.close()


class Fixture:
    """bench/fixture.py in its own process: simulated Ray session and report receiver."""

    def __init__(
        self, temp_root: Path | None, nodes: int = 1, defer: bool = False, count_path: str = "/"
    ) -> None:
        argv = [PY, str(BENCH / "fixture.py"), "--nodes", str(nodes)]
        if temp_root is not None:
            argv += ["--temp-root", str(temp_root)]
        if defer:
            argv.append("--defer")
        self.count_path = count_path
        self.proc = spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.url = ""
        self.session: Path | None = None
        self.reports = 0
        self.report_bytes = 0
        self.stats: dict[str, list[int]] | None = None
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self._wait(lambda: bool(self.url), 30, "the fixture's receiver")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            kind, _, rest = line.strip().partition(" ")
            with self._cond:
                if kind == "url":
                    self.url = rest
                elif kind == "session":
                    self.session = Path(rest)
                elif kind == "stats":
                    self.stats = json.loads(rest)
                elif kind == "report":
                    _, size, path = rest.split(" ", 2)
                    if path == self.count_path:
                        self.reports += 1
                        self.report_bytes = int(size)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _wait(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not check():
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
                self._cond.wait(min(left, 0.5))

    @property
    def endpoint(self) -> str:
        """The URL the daemon should report to (counted reports arrive here)."""
        return self.url.rstrip("/") + self.count_path

    def start_session(self) -> None:
        """With defer=True: make the session appear now."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("start\n")
        self.proc.stdin.flush()

    def served(self, timeout: float = 10) -> dict[str, list[int]]:
        """Per socket and path: [requests, bytes] served so far."""
        assert self.proc.stdin is not None
        with self._cond:
            self.stats = None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        self._wait(lambda: self.stats is not None, timeout, "the fixture's counts")
        assert self.stats is not None
        return self.stats

    def wait_session(self, timeout: float = 30) -> Path:
        """The session directory, once every socket accepts connections."""
        self._wait(lambda: self.session is not None, timeout, "the simulated session")
        assert self.session is not None
        return self.session

    def wait_reports(self, n: int, timeout: float) -> int:
        """Block until at least `n` reports arrived; returns the count at that moment."""
        self._wait(lambda: self.reports >= n, timeout, f"{n} reports")
        return self.reports

    def close(self) -> None:
        """Stop the fixture."""
        stop(self.proc)


def daemon_env(
    tmp: Path,
    temp_root: Path,
    endpoint: str,
    interval: float,
    notify: Path | None = None,
    watchdog_usec: int | None = None,
    intake: str = "127.0.0.1:0",
) -> dict[str, str]:
    """The environment a daemon run gets: only what the benchmark means it to see.

    The loopback intake for Ray's reporter stays on, as by default, but on a port of its
    own (0: any free one), so daemons running side by side do not compete for 18922.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "USAGESTATSD_"))}
    for name in (
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "JOURNAL_STREAM",
        "DO_NOT_TRACK",
    ):
        env.pop(name, None)
    env.update(
        RAY_USAGE_STATS_ENABLED="1",
        RAY_USAGE_STATS_CONFIG_PATH=str(tmp / "ray-config.json"),
        USAGESTATSD_TEMP_ROOT=str(temp_root),
        USAGESTATSD_STATE_DIR=str(tmp / "state"),
        RAY_USAGE_STATS_REPORT_URL=endpoint,
        RAY_USAGE_STATS_REPORT_INTERVAL_S=str(interval),
        HOME=str(tmp),
        USAGESTATSD_RAY_INTAKE=intake,
    )
    if notify is not None:
        env["NOTIFY_SOCKET"] = str(notify)
    if watchdog_usec is not None:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    return env


def daemon_argv(tmp: Path, prefix: list[str] | None = None) -> list[str]:
    """`usagestatsd run` as systemd starts it (the console script), with an empty settings file."""
    config = tmp / "usagestatsd.toml"
    if not config.exists():
        config.write_text("# benchmark: everything comes from the environment\n")
    head = prefix if prefix is not None else [str(DAEMON)]
    return [*head, "run", "--config", str(config), "--log-format", "json"]


def start_daemon(
    tmp: Path, env: dict[str, str], prefix: list[str] | None = None
) -> subprocess.Popen[str]:
    """Start the daemon with its log in tmp/daemon.log."""
    log = open(tmp / "daemon.log", "a")  # noqa: SIM115 - the child keeps it
    try:
        return spawn(daemon_argv(tmp, prefix), env=env, stdout=log, stderr=log, cwd=tmp)
    finally:
        log.close()
