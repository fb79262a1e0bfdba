"""Hostile peers for the fault suite: raw TCP/TLS servers, a provider socket, a tmpfs.

Everything listens on 127.0.0.1 or on Unix sockets under the test's own directories.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.support.servers import RawServer, http_reply, read_request
from usagestatsd.beside_ray import BesideRay
from usagestatsd.cycle import ReportCycle
from usagestatsd.demo import recorded_responses
from usagestatsd.privacy import KnownIdentifiers
from usagestatsd.session import Session, find_session
from usagestatsd.settings import Settings

Behaviour = Callable[[socket.socket], None]
# Ray's-reporter intake on a free loopback port, so tests never contend for the fixed one.
FREE_PORT = "127.0.0.1:0"


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


def provider_doc(
    cluster_id: str | None = "0f" * 28,
    libraries: Sequence[str] = ("core", "train"),
    tags: Mapping[str, str] | None = None,
    hardware: Sequence[str] = ("NVIDIA A100",),
) -> bytes:
    """A docs/provider-protocol.md protocol_version 1 answer to GET /v1/usage."""
    return json.dumps(
        {
            "protocol_version": 1,
            "cluster_id": cluster_id,
            "library_usages": list(libraries),
            "extra_usage_tags": dict(tags or {"dashboard_used": "false"}),
            "hardware_usages": list(hardware),
        }
    ).encode()


def responses_with(
    replace: Mapping[str, Mapping[str, bytes]] | None = None, drop: Sequence[str] = ()
) -> dict[str, dict[str, bytes]]:
    """The recorded Ray 2.60 answers, some replaced, some sockets left out."""
    out = {name: dict(paths) for name, paths in recorded_responses().items()}
    for name, paths in (replace or {}).items():
        out[name] = dict(paths)
    for name in drop:
        out.pop(name, None)
    return out


def the_session(temp_root: Path) -> Session:
    """The session the daemon would find now."""
    found = find_session(temp_root).session
    assert found is not None
    return found


def report_cycle(settings: Settings, known: KnownIdentifiers | None = None) -> ReportCycle:
    """The daemon's report cycle, built as the daemon builds it (here without an intake)."""
    beside = BesideRay(settings.beside_ray, lambda: None)
    return ReportCycle(settings, known or KnownIdentifiers(), beside)


async def run_cycles(
    settings: Settings, cycles: int = 1, known: KnownIdentifiers | None = None
) -> tuple[ReportCycle, list[MutableMapping[str, Any]]]:
    """Run whole report cycles in this process (the daemon's own code), capturing its events."""
    cycle = report_cycle(settings, known)
    with capture_logs() as events:
        for _ in range(cycles):
            await cycle.run(the_session(settings.temp_root))
    return cycle, events


def named(events: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    """The events called `name`."""
    return [e for e in events if e.get("event") == name]


@contextlib.contextmanager
def tmpfs(directory: Path, size: str = "64k") -> Iterator[Path]:
    """Mount a small tmpfs on `directory` for the with-block; skip when mounting is refused."""
    directory.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def fill(directory: Path) -> None:
    """Fill the file system holding `directory` to the last byte (files filler, filler2)."""
    for name, size in (("filler", 4096), ("filler2", 1)):
        fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * size)
        except OSError:
            pass
        finally:
            os.close(fd)
