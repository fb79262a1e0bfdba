"""aiohttp connectors that vet each new connection's peer before the request is sent.

One mechanism for both transports of Ray's dashboard: the Unix sockets (`facts/cluster.py`) and
HTTP on TCP for Ray versions without them (`dashboard.py`). The check is given the
connection's own socket (what the kernel says about the peer, see `facts/peers.py`) and raises
to refuse it; a refused connection is closed and nothing is sent on it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import aiohttp
from aiohttp.client_reqrep import ClientRequest
from aiohttp.tracing import Trace

PeerCheck = Callable[[socket.socket | None], None]


async def _vetted(
    conn: aiohttp.connector.Connection, check: PeerCheck
) -> aiohttp.connector.Connection:
    transport = conn.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    try:
        check(sock)
    except BaseException:
        conn.close()
        raise
    return conn


class CheckedUnixConnector(aiohttp.UnixConnector):
    """A Unix connector whose every connection passes `check` before it is used."""

    def __init__(self, path: str, check: PeerCheck) -> None:
        super().__init__(path=path)
        self._check = check

    async def connect(
        self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> aiohttp.connector.Connection:
        return await _vetted(await super().connect(req, traces, timeout), self._check)


class CheckedTCPConnector(aiohttp.TCPConnector):
    """A TCP connector (one connection per request) whose every connection passes `check`."""

    def __init__(self, check: PeerCheck) -> None:
        super().__init__(force_close=True)
        self._check = check

    async def connect(
        self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> aiohttp.connector.Connection:
        return await _vetted(await super().connect(req, traces, timeout), self._check)
