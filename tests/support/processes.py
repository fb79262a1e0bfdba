"""Real daemon and CLI processes for tests, and the one fast daemon environment.

`daemon_env` is the environment every process test gives `usagestatsd run`: collection on,
a short report interval and retry delays, no Ray intake, and nothing of this machine's own
settings, home or users' Ray config. Tests change what they test with keyword overrides.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.poll import until, wait_until
from tests.support.servers import ScriptedEndpoint

# Ray's-reporter intake on a free loopback port, so tests never contend for the fixed one.
FREE_INTAKE = "127.0.0.1:0"


def _hold_unlistened_port() -> socket.socket:
    """A loopback port bound for this test process's lifetime and never listened on.

    Connecting to it is refused by the kernel, whatever else runs on the machine; without
    SO_REUSEADDR no other socket can bind it meanwhile."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


_UNLISTENED = _hold_unlistened_port()
# For a test of a stopped head: with no dash_* sockets and no dashboard process the daemon
# would try Ray's default 127.0.0.1:8265, where the machine running the tests may well have
# a Ray dashboard of its own (seen from a container, whose /proc does not show its holder).
NO_DASHBOARD = f"127.0.0.1:{_UNLISTENED.getsockname()[1]}"


def daemon_env(temp_root: Path, state_dir: Path, url: str, **extra: str) -> dict[str, str]:
    """The environment for a daemon process reporting quickly to `url`."""
    env = {
        "RAY_USAGE_STATS_ENABLED": "1",
        "USAGESTATSD_TEMP_ROOT": str(temp_root),
        "USAGESTATSD_STATE_DIR": str(state_dir),
        "RAY_USAGE_STATS_REPORT_URL": url,
        "RAY_USAGE_STATS_REPORT_INTERVAL_S": "0.5",
        "USAGESTATSD_RETRY_INITIAL_DELAY_S": "0.05",
        "USAGESTATSD_RETRY_MAX_DELAY_S": "0.2",
        "USAGESTATSD_RAY_INTAKE": "off",
        "HOME": str(temp_root.parent / "home"),
        # Never the machine's /run/usagestatsd (store/published.py): a test's own, if it made it.
        "USAGESTATSD_RUNTIME_DIR": str(temp_root.parent / "run"),
        # Never the machine's own users' ~/.ray/config.json (consent/ray_files.py).
        "USAGESTATSD_RAY_CONFIG_FILES": str(temp_root.parent / "ray-users" / "config.json"),
    }
    env.update(extra)
    return env


def intake_env(temp_root: Path, state_dir: Path, url: str, **extra: str) -> dict[str, str]:
    """`daemon_env` with Ray's-reporter intake listening, on a free loopback port."""
    return daemon_env(temp_root, state_dir, url, USAGESTATSD_RAY_INTAKE=FREE_INTAKE, **extra)


def consent_file_env(
    temp_root: Path, state_dir: Path, url: str, consent: Path, content: str
) -> dict[str, str]:
    """A daemon environment whose decision comes from the consent file (written here)."""
    consent.write_text(content)
    env = daemon_env(temp_root, state_dir, url, RAY_USAGE_STATS_CONFIG_PATH=str(consent))
    del env["RAY_USAGE_STATS_ENABLED"]
    return env


def without_our_settings() -> dict[str, str]:
    """This process's environment without Ray's, usagestatsd's or systemd's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "USAGESTATSD_"))}
    env.pop("NOTIFY_SOCKET", None)
    env.pop("DO_NOT_TRACK", None)
    return env


def spawn_logged(
    cmd: Sequence[str], env: Mapping[str, str]
) -> tuple[subprocess.Popen[bytes], list[str], threading.Thread]:
    """Start `cmd` with stdout and stderr collected, line by line, by a thread."""
    proc = subprocess.Popen(
        list(cmd),
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.append(raw.decode(errors="replace").rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    return proc, lines, reader


def first_line(
    proc: subprocess.Popen[bytes], lines: list[str], needle: str, timeout: float
) -> str | None:
    """The first collected line containing `needle`, waiting for it; None once `timeout`
    passes or the process has exited without writing it."""

    def seen_or_exited() -> bool:
        return any(needle in x for x in list(lines)) or proc.poll() is not None

    wait_until(seen_or_exited, timeout, fail=False, interval=0.02)
    if proc.poll() is not None:
        time.sleep(0.2)  # its last lines may still be on their way through the pipe
    return next((line for line in list(lines) if needle in line), None)


def end_process(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM (unless it has exited), wait up to `timeout` s, SIGKILL if it hangs; the
    exit status."""
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


@dataclass
class DaemonProcess:
    """A real `usagestatsd run` process, with its output collected."""

    proc: subprocess.Popen[bytes]
    lines: list[str]

    def wait_for(self, needle: str, timeout: float = 20.0) -> str:
        """The first log line containing `needle`, waiting for it to appear."""
        line = first_line(self.proc, self.lines, needle, timeout)
        if line is None:
            raise AssertionError(f"no log line with {needle!r}; got:\n" + "\n".join(self.lines))
        return line

    def count(self, needle: str) -> int:
        """How many log lines contain `needle`."""
        return sum(needle in line for line in list(self.lines))

    def events(self) -> list[dict[str, Any]]:
        """The JSON log events so far."""
        out = []
        for line in list(self.lines):
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, then wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout)


def start_daemon(
    env: Mapping[str, str], args: Sequence[str] = (), settings_file: Path | None = None
) -> DaemonProcess:
    """Start `python -m usagestatsd run` with JSON logs, collecting stderr lines in a thread."""
    cmd = [sys.executable, "-m", "usagestatsd", "run", "--log-format", "json"]
    if settings_file is not None:
        cmd += ["--config", str(settings_file)]
    proc, lines, _ = spawn_logged([*cmd, *args], {**without_our_settings(), **env})
    return DaemonProcess(proc, lines)


@contextlib.contextmanager
def running_daemon(
    env: Mapping[str, str], args: Sequence[str] = (), settings_file: Path | None = None
) -> Iterator[DaemonProcess]:
    """A daemon for the duration of a with-block; always stopped (killed if it hangs)."""
    daemon = start_daemon(env, args, settings_file)
    try:
        yield daemon
    finally:
        end_process(daemon.proc, 5)


async def await_line(daemon: DaemonProcess, needle: str, timeout: float = 20.0) -> str:
    """Like DaemonProcess.wait_for, without blocking the event loop the test servers run on."""
    await until(lambda: daemon.count(needle) > 0 or daemon.proc.poll() is not None, timeout)
    return daemon.wait_for(needle, timeout=0.5)


async def await_looks(daemon: DaemonProcess, n: int, timeout: float = 20.0) -> None:
    """Evidence that the daemon's loop went on: `n` more looks at the temp root (the debug
    event `session.looked`: run the daemon with USAGESTATSD_LOG_LEVEL=debug)."""
    looked = daemon.count("session.looked")
    await until(lambda: daemon.count("session.looked") >= looked + n, timeout, f"{n} more looks")


async def report_then_stop(env: Mapping[str, str], endpoint: ScriptedEndpoint, count: int) -> None:
    """Run a daemon until `endpoint` has received `count` reports in all, then stop it."""
    with running_daemon(env) as daemon:
        await until(lambda: len(endpoint.received) >= count)
        daemon.stop()


async def run_cli(args: Sequence[str], env: Mapping[str, str]) -> tuple[int, str, str]:
    """Run the real command line without blocking the event loop the test servers run on.

    The child gets this environment minus RAY_* and USAGESTATSD_*, plus `env`.
    """
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "USAGESTATSD_"))}
    base.update(env)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "usagestatsd",
        *args,
        env=base,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()
