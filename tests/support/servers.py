"""The one family of fake receivers: report endpoints and raw peers for tests.

`ScriptedEndpoint` is a well-behaved HTTP endpoint on 127.0.0.1 that answers with a script
of statuses (`ThreadedEndpoint` serves one from a thread, for tests without an event loop).
`RawServer` (on a free TCP port with `RawTcpServer`, optionally behind TLS, or
on a Unix socket with `RawUnixServer`) hands each connection to a plain function, so a test
can misbehave as any real peer could: `reply`, `reset_mid_response`, `trickle`, `Endless`.
Nothing here imitates the project's own code; these are the outside world the daemon talks
to (Ray's dashboard sockets, report endpoints), made to misbehave on request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from usagestatsd.demo import serve_on_loopback

Behaviour = Callable[[socket.socket], None]


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
        return [json.loads(body) for _, body, _ in list(self.received)]


class ThreadedEndpoint:
    """A ScriptedEndpoint served by its own event loop in a thread, for synchronous tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = ScriptedEndpoint()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        self.closed = False

    @property
    def url(self) -> str:
        """The endpoint's URL."""
        return self.server.url

    @property
    def port(self) -> int:
        """The endpoint's port on 127.0.0.1."""
        return self.server.port

    def bodies(self) -> list[dict[str, Any]]:
        """Every report received so far, decoded."""
        return self.server.bodies()

    def raw(self) -> list[bytes]:
        """Every body received so far, as sent."""
        return [body for _, body, _ in list(self.server.received)]

    def count(self) -> int:
        """How many requests arrived."""
        return len(self.server.received)

    def close(self) -> None:
        """Stop listening and stop the loop (idempotent)."""
        if self.closed:
            return
        self.closed = True
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


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


class RawTcpServer(RawServer):
    """A RawServer on a free 127.0.0.1 port.

    With `tls`, the first byte of each connection is recorded before the TLS handshake, so
    a test can prove that a client never spoke plain HTTP to it.
    """

    def __init__(self, behaviours: Sequence[Behaviour], tls: ssl.SSLContext | None = None):
        self.tls = tls
        self.first_bytes: list[bytes] = []
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        super().__init__(sock, behaviours)

    def url(self, scheme: str = "http") -> str:
        """This server's URL."""
        return f"{scheme}://127.0.0.1:{self.port}/"

    def _run(self, conn: socket.socket, behaviour: Behaviour) -> None:
        with contextlib.suppress(OSError), conn:
            conn.settimeout(5)
            if self.tls is not None:
                self.first_bytes.append(conn.recv(1, socket.MSG_PEEK))
                with self.tls.wrap_socket(conn, server_side=True) as wrapped:
                    behaviour(wrapped)
                return
            behaviour(conn)


def read_whole_request(conn: socket.socket) -> bytes:
    """Read one request, head and body, so that closing afterwards cannot reset the client."""
    data = read_request(conn)
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def reply(status: str = "200 OK", body: bytes = b'{"ok": true}', extra: str = "") -> Behaviour:
    """Answer one request with a complete response."""

    def behave(conn: socket.socket) -> None:
        read_whole_request(conn)
        conn.sendall(http_reply(body, status, extra))

    return behave


def reset_mid_response(conn: socket.socket) -> None:
    """Send half a response, then reset the connection (RST, not FIN)."""
    read_request(conn)
    conn.sendall(http_reply(b'{"ok": true, "padding": "' + b"x" * 200 + b'"}')[:70])
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def trickle(status: str = "200 OK", head: bool = False) -> Behaviour:
    """A reply arriving at one byte per second: the whole of it, or only its 64-byte body."""

    def behave(conn: socket.socket) -> None:
        read_request(conn)
        start = f"HTTP/1.1 {status}\r\nContent-Length: 64\r\nConnection: close\r\n\r\n"
        if not head:
            conn.sendall(start.encode())
        for byte in (start.encode() if head else b"") + b" " * 64:
            conn.sendall(bytes([byte]))
            time.sleep(1)

    return behave


class Endless:
    """A response whose body never ends; counts what it managed to push into the socket."""

    def __init__(self, status: str = "200 OK") -> None:
        self.status = status
        self.sent: list[int] = []

    def __call__(self, conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(f"HTTP/1.1 {self.status}\r\nConnection: close\r\n\r\n".encode())
        total, chunk = 0, b"x" * 65536
        try:
            while total < 1 << 30:
                conn.sendall(chunk)
                total += len(chunk)
        finally:
            self.sent.append(total)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (and its key), made with the openssl CLI."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side TLS context for the certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context
