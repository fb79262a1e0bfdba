"""Real servers for tests: scripted HTTP endpoints on 127.0.0.1, raw Unix-socket peers.

Nothing here imitates the project's own code; these are the outside world the daemon
talks to (Ray's dashboard sockets, report endpoints), made to misbehave on request.
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from usagestatsd.demo import serve_on_loopback


@dataclass
class Reply:
    """One scripted answer: status, headers, body."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b'{"ok": true}'


class ScriptedEndpoint:
    """An HTTP endpoint on 127.0.0.1 that answers with a script, then with the last reply."""

    def __init__(self, script: Sequence[Reply | int] = (200,)) -> None:
        self.script = [r if isinstance(r, Reply) else Reply(r) for r in script]
        self.received: list[tuple[float, bytes, dict[str, str]]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append((time.monotonic(), body, dict(request.headers)))
        reply = self.script[min(len(self.received) - 1, len(self.script) - 1)]
        return web.Response(status=reply.status, headers=dict(reply.headers), body=reply.body)

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner, self.port = await serve_on_loopback(app)

    @property
    def url(self) -> str:
        """The endpoint's URL."""
        return f"http://127.0.0.1:{self.port}/"

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner:
            await self._runner.cleanup()

    def bodies(self) -> list[dict[str, Any]]:
        """Every received body, decoded."""
        return [json.loads(body) for _, body, _ in self.received]


class RawServer:
    """A listening socket served in threads; connection n gets behaviours[n] (the last repeats).

    The behaviours are plain functions of the connected socket, so a test can misbehave in
    any way a real peer could (hang, cut a reply short, send garbage).
    """

    def __init__(
        self, sock: socket.socket, behaviours: Sequence[Callable[[socket.socket], None]]
    ) -> None:
        self.sock = sock
        self.behaviours = list(behaviours)
        self.sock.listen(16)
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            behaviour = self.behaviours[min(self.connections, len(self.behaviours) - 1)]
            self.connections += 1
            threading.Thread(target=self._run, args=(conn, behaviour), daemon=True).start()

    def _run(self, conn: socket.socket, behaviour: Callable[[socket.socket], None]) -> None:
        with contextlib.suppress(OSError), conn:
            behaviour(conn)

    def close(self) -> None:
        """Stop accepting."""
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


class RawUnixServer(RawServer):
    """A RawServer on a Unix socket at `path`, removed again by close()."""

    def __init__(self, path: Path, behaviour: Callable[[socket.socket], None]) -> None:
        self.path = path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        super().__init__(sock, [behaviour])

    def close(self) -> None:
        """Stop accepting and remove the socket."""
        super().close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def read_request(conn: socket.socket) -> bytes:
    """Read one HTTP request head from a connection."""
    data = b""
    conn.settimeout(5)
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def http_reply(body: bytes, status: str = "200 OK", extra: str = "") -> bytes:
    """A complete HTTP/1.1 response."""
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class DaemonProcess:
    """A real `usagestatsd run` process, with its output collected."""

    proc: subprocess.Popen[bytes]
    lines: list[str]

    def wait_for(self, needle: str, timeout: float = 20.0) -> str:
        """The first log line containing `needle`, waiting for it to appear."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if needle in line:
                    return line
            if self.proc.poll() is not None and not any(needle in x for x in self.lines):
                time.sleep(0.2)
                break
            time.sleep(0.05)
        raise AssertionError(f"no log line with {needle!r}; got:\n" + "\n".join(self.lines))

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
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "USAGESTATSD_"))}
    full_env.pop("NOTIFY_SOCKET", None)
    full_env.pop("DO_NOT_TRACK", None)
    full_env.update(env)
    cmd = [sys.executable, "-m", "usagestatsd", "run", "--log-format", "json"]
    if settings_file is not None:
        cmd += ["--config", str(settings_file)]
    proc = subprocess.Popen(
        [*cmd, *args],
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.append(raw.decode(errors="replace").rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
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
        if daemon.proc.poll() is None:
            daemon.proc.terminate()
            try:
                daemon.proc.wait(5)
            except subprocess.TimeoutExpired:
                daemon.proc.kill()
                daemon.proc.wait()


def poll_until(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Wait (blocking) until `predicate()` is true; False if `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


async def until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait (asynchronously) until `predicate()` is true, or fail."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def await_line(daemon: DaemonProcess, needle: str, timeout: float = 20.0) -> str:
    """Like DaemonProcess.wait_for, without blocking the event loop the test servers run on."""
    await until(lambda: daemon.count(needle) > 0 or daemon.proc.poll() is not None, timeout)
    return daemon.wait_for(needle, timeout=0.5)


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
