"""The intake's HTTP handling and bounds, in process, with real loopback sockets."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator

import pytest

from usagestatsd.base.throttle import Throttle
from usagestatsd.cycle.beside_ray import RaySighting
from usagestatsd.service import intake
from usagestatsd.service.intake import RayIntake


@pytest.fixture
async def served(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[RayIntake, list[RaySighting]]]:
    """An intake on a free port that trusts this process's uid, with a short deadline."""
    monkeypatch.setattr(intake, "REQUEST_DEADLINE_S", 0.5)
    seen: list[RaySighting] = []
    server = RayIntake("127.0.0.1", 0, seen.append, lambda: {os.geteuid()})
    assert await server.start()
    yield server, seen
    await server.stop()


async def exchange(port: int, *parts: bytes) -> bytes:
    """Send `parts` as separate segments (a pause between them); everything answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for part in parts:
        writer.write(part)
        await writer.drain()
        await asyncio.sleep(0.1)
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


def head(length: int, extra: str = "") -> bytes:
    return f"POST / HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: {length}\r\n\r\n".encode()


async def test_body_in_segments_and_expect_continue(
    served: tuple[RayIntake, list[RaySighting]],
) -> None:
    """A body split across segments is read whole; `Expect: 100-continue` is honoured."""
    server, seen = served
    body = b'{"session_start_timestamp_ms": 1700000000000, "seq_number": 7}'
    answer = await exchange(server.port, head(len(body)) + body[:10], body[10:30], body[30:])
    assert answer.startswith(b"HTTP/1.1 200 OK")
    answer = await exchange(server.port, head(len(body), "Expect: 100-continue\r\n"), body)
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK")
    assert [(s.session_start_ms, s.seq_number) for s in seen] == [(1700000000000, 7)] * 2


@pytest.mark.parametrize(
    "request_bytes,status",
    [
        (b"GET / HTTP/1.1\r\n\r\n", b"405"),
        (head(intake.MAX_BODY + 1), b"413"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", b"411"),
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", b"400"),
        (b"POST /\r\n\r\n", b"400"),
        (b"POST / HTTP/1.1\r\nX: " + b"a" * (intake.MAX_HEAD + 10), b"431"),
    ],
)
async def test_bad_requests_are_answered_and_not_counted(
    served: tuple[RayIntake, list[RaySighting]], request_bytes: bytes, status: bytes
) -> None:
    """Each bad request gets its status, and nothing is taken as Ray's report."""
    server, seen = served
    answer = await exchange(server.port, request_bytes)
    assert answer.split(b" ")[1] == status
    assert seen == []


async def test_stalled_request_is_dropped_at_the_deadline(
    served: tuple[RayIntake, list[RaySighting]],
) -> None:
    """A head announcing 100 bytes that never come: the connection is closed, not kept."""
    server, seen = served
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(head(100))
    # Closed by the intake after REQUEST_DEADLINE_S, without an answer.
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    assert seen == []


def accepted_by(port: int) -> int:
    """The server's connections on `port` that it has accepted, as the kernel lists them.

    Its side of an established connection has an inode once accepted and 0 while it waits
    in the listen backlog (counting descriptors instead would count the files other threads
    open meanwhile).
    """
    count = 0
    with open("/proc/self/net/tcp", encoding="ascii") as table:
        for row in list(table)[1:]:
            fields = row.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01" and int(fields[9]) != 0:
                count += 1
    return count


async def test_connections_are_capped(served: tuple[RayIntake, list[RaySighting]]) -> None:
    """Idle clients beyond the cap wait in the kernel: the intake holds at most the cap."""
    server, _ = served
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(40)]
    try:
        await asyncio.sleep(0.2)
        assert 0 < accepted_by(server.port) <= intake.MAX_CONNECTIONS
    finally:
        for s in held:
            s.close()


async def test_stop_does_not_wait_for_clients(served: tuple[RayIntake, list[RaySighting]]) -> None:
    """Open, stalled connections: stop() returns at once and closes them."""
    server, _ = served
    held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(3)]
    for _, writer in held:
        writer.write(head(100))
    await asyncio.sleep(0.1)
    await asyncio.wait_for(server.stop(), 0.5)
    for reader, writer in held:
        assert await asyncio.wait_for(reader.read(), 2) == b""
        writer.close()


def test_throttle_says_once_per_interval() -> None:
    """The first occurrence is said; the next ones within the interval are counted."""
    throttle = Throttle(60)
    assert throttle.due(0.0) == 0
    assert [throttle.due(t) for t in (1.0, 30.0, 59.0)] == [None, None, None]
    assert throttle.due(60.0) == 3


def test_throttle_allows_a_burst_then_one_per_interval() -> None:
    """Five in a row, then one a minute; after a quiet spell, a burst again."""
    throttle = Throttle(60, burst=5)
    assert [throttle.due(float(t)) for t in range(7)] == [0, 0, 0, 0, 0, None, None]
    assert throttle.due(66.0) == 2
    assert throttle.due(67.0) is None
    assert [throttle.due(1000.0 + t) for t in range(5)] == [1, 0, 0, 0, 0]
