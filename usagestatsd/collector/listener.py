"""The listening socket and its bounds: what aiohttp's own server does not limit.

Anyone who can reach the port can open connections, so the collector bounds what they cost:

- at most `max_connections` connections are held; when a new one would pass that, the
  oldest connection that is not inside a request is closed (an idle or half-sent one), so
  a crowd of idle connections never keeps an honest sender out;
- one deadline per connection, always running: the request head must be complete within
  HEAD_DEADLINE_S of connecting, and the next one within IDLE_DEADLINE_S of the previous
  answer (idle keep-alive connections are closed); a request is answered within
  REQUEST_DEADLINE_S (the handler bounds the body itself, more tightly);
- a resource error at accept (EMFILE, ...) is one log line per LOG_INTERVAL_S, with a
  count of those held back, and accepting resumes after ACCEPT_RETRY_S;
- connections closed by a deadline or to make room are counted, and logged the same way.

aiohttp's TCPSite accepts without any of this (its accept errors are a traceback each),
so the socket is ours and each accepted connection is handed to aiohttp's protocol.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from usagestatsd.base.throttle import Throttle, accept_failed

log = structlog.get_logger()

HEAD_DEADLINE_S = 10.0
IDLE_DEADLINE_S = 5.0
REQUEST_DEADLINE_S = 60.0  # body, storage (a busy database) and the answer
ACCEPT_RETRY_S = 0.5
_EARLY_S = 0.001  # the loop runs a timer up to its clock's resolution before it is due


class _Connection(asyncio.Protocol):
    """aiohttp's protocol for one connection, with its deadline and its place in the count."""

    def __init__(self, inner: asyncio.Protocol, listener: Listener) -> None:
        self.inner = inner
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._why = ""

    def deadline(self, seconds: float, why: str) -> None:
        """Close the connection in `seconds` unless another deadline replaces this one.

        Moved twice per request, so the timer is not: a later deadline is only noted, and
        the timer, when it fires, finds it and waits on; it is replaced only when the new
        deadline is earlier than the one it waits for.
        """
        loop = asyncio.get_running_loop()
        self._due, self._why = loop.time() + seconds, why
        if self._timer is None or self._timer.when() > self._due:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(self._due, self._expire)

    def _expire(self) -> None:
        loop = asyncio.get_running_loop()
        if self._due - loop.time() > _EARLY_S:  # moved later meanwhile
            self._timer = loop.call_at(self._due, self._expire)
            return
        self._timer = None
        self.close(self._why)

    def close(self, why: str) -> None:
        """Drop the connection now (abort: nothing waits for a peer that does not read)."""
        if self.transport is not None and not self.transport.is_closing():
            self.listener.note_closed(why)
            self.transport.abort()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.inner.connection_made(transport)
        self.listener.opened(self)
        self.deadline(HEAD_DEADLINE_S, "no request head in time")

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.listener.lost(self)
        self.inner.connection_lost(exc)


class Listener:
    """Accepts on one TCP socket within the bounds above; aiohttp serves each connection."""

    def __init__(self, protocol: Callable[[], asyncio.Protocol], max_connections: int) -> None:
        self._protocol = protocol
        self.max_connections = max_connections
        self._open: dict[asyncio.Transport, _Connection] = {}  # oldest first
        self._sock: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._accept_log = Throttle()
        self._close_log = Throttle()
        self._closed_since_log = 0

    def listen(self, host: str, port: int, backlog: int = 1024) -> int:
        """Bind and start accepting; returns the port (raises OSError: port taken)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server((host, port), family=family, backlog=backlog)
        self._sock.setblocking(False)
        self._acceptor = asyncio.create_task(self._accept_loop())
        return int(self._sock.getsockname()[1])

    async def stop(self) -> None:
        """Stop accepting (the connections are closed by aiohttp's shutdown)."""
        if self._acceptor is not None:
            self._acceptor.cancel()
            await asyncio.gather(self._acceptor, return_exceptions=True)
        if self._sock is not None:
            self._sock.close()

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]
    ) -> Any:
        """Marks the connection busy while its request is handled, and moves its deadline."""
        transport = request.transport
        conn = self._open.get(transport) if isinstance(transport, asyncio.Transport) else None
        if conn is None:
            return await handler(request)
        conn.busy = True
        conn.deadline(REQUEST_DEADLINE_S, "request not answered in time")
        try:
            return await handler(request)
        finally:
            conn.busy = False
            conn.deadline(IDLE_DEADLINE_S, "idle after the answer")

    # -- the count ----------------------------------------------------------------

    def opened(self, conn: _Connection) -> None:
        assert conn.transport is not None
        self._open[conn.transport] = conn
        if len(self._open) > self.max_connections:
            self._make_room(conn)

    def lost(self, conn: _Connection) -> None:
        if conn.transport is not None:
            self._open.pop(conn.transport, None)

    def _make_room(self, newest: _Connection) -> None:
        for conn in self._open.values():
            if not conn.busy and conn is not newest:
                conn.close("closed to make room for a new connection")
                return
        newest.close("every connection is inside a request")

    def note_closed(self, why: str) -> None:
        self._closed_since_log += 1
        held = self._close_log.due(time.monotonic())
        if held is not None:
            log.info(
                "http.connections_closed",
                reason=why,
                closed=self._closed_since_log,
                open=len(self._open),
                max_connections=self.max_connections,
            )
            self._closed_since_log = 0

    # -- accepting ----------------------------------------------------------------

    async def _accept_loop(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError as exc:
                self._accept_failed(exc)
                await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            try:
                await loop.connect_accepted_socket(
                    lambda: _Connection(self._protocol(), self), conn
                )
            except OSError:
                conn.close()

    def _accept_failed(self, exc: OSError) -> None:
        open_now = len(self._open)
        accept_failed(self._accept_log, "http.accept_failed", exc, ACCEPT_RETRY_S, open=open_now)
