"""The loopback intake for Ray's own reporter: a small HTTP/1.1 server with explicit bounds.

Every local user can reach a loopback port, so the intake is built to be harmless to the
daemon whatever a client does (docs/security.md, "Intake"):

- at most MAX_CONNECTIONS connections are open at once; the rest wait in the kernel's
  accept queue, so the intake never holds more than a handful of descriptors;
- each connection has one deadline for the whole request (REQUEST_DEADLINE_S), and stopping
  cancels every connection at once: no client can delay SIGTERM;
- the client's uid is asked of the kernel right after accept, for that client's own socket
  only (peers.tcp_client_owner: netlink sock_diag, whose cost does not grow with the number
  of sockets on the machine): only Ray's uid (from `trusted_uids()`) is read at all; anyone
  else, and a client whose socket cannot be found or is held by no process, gets 403;
- the listening socket is systemd's when socket-activated (service/intake_socket.py), so the port
  stays held across restarts; bound here otherwise, and when its port is taken the owner
  is named and binding is retried every BIND_RETRY_S;
- the body is read in full (Content-Length, across TCP segments), within MAX_BODY;
- a resource error at accept (EMFILE, ENFILE, ...) is logged at most once a minute, and so
  are refused and bad requests; absorbed reports after the first five in a row too;
- a report is absorbed (200) only when the daemon reports that session itself
  (`why_not_replaced`); otherwise Ray's reporter gets a 503 naming why, so it records a
  failure rather than a report nobody sends (docs/beside-ray.md).

A small asyncio server rather than aiohttp.web: aiohttp's server has no connection cap,
waits for open handlers when it stops (60 s by default in 3.8), and its accept errors go to
the event loop's exception handler (a traceback each); these bounds hold the same with
every aiohttp version because none of them is involved.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import structlog

from usagestatsd.base.hostport import host_port
from usagestatsd.base.throttle import Throttle, accept_failed
from usagestatsd.cycle.beside_ray import RaySighting, parse_sighting
from usagestatsd.facts.peers import Peer, tcp_client_owner
from usagestatsd.service.intake_socket import PortTaken, bind, take_inherited

log = structlog.get_logger()

MAX_CONNECTIONS = 8  # Ray's reporter sends one POST an hour
REQUEST_DEADLINE_S = 10.0  # the whole request, head and body (Ray's own timeout is 10 s)
MAX_HEAD = 16 * 1024
MAX_BODY = 256 * 1024  # a Ray report is about 3 KB
ACCEPT_RETRY_S = 1.0  # after a resource error at accept, wait before trying again
BIND_RETRY_S = 30.0  # while the port is someone else's: Ray reports hourly
BACKLOG = 64
ABSORBED_BURST = 5  # report_absorbed lines in a row before one a minute
# How long a POST waits for the daemon's first decision on the session (the POST pulls that
# cycle forward): within Ray's own 10 s timeout, with room to answer.
VERDICT_WAIT_S = 7.0
NOT_REPLACED_STATUS = "503 usagestatsd does not report this session"
NOT_REPLACED_FIX = (
    "Ray's reporter counts this report as failed; to have Ray send its own reports, restart "
    "Ray without RAY_USAGE_STATS_REPORT_URL, or fix what `usagestatsd status` names"
)
# /proc/self/net: /proc/net itself is hidden by the unit's ProcSubset=pid.
PROC_SELF = Path("/proc/self")
# The kernel's overflow uid: how a uid outside the daemon's user namespace (PrivateUsers=)
# appears. It stands for every such user at once, so it is never trusted.
OVERFLOW_UID = 65534


class _BadRequest(Exception):
    def __init__(self, status: str, problem: str) -> None:
        super().__init__(problem)
        self.status = status


def _response(status: str, doc: dict[str, object]) -> bytes:
    body = json.dumps(doc).encode()
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def _parse_head(head: bytes) -> tuple[str, int, bool]:
    """Method, Content-Length and whether the client expects `100 Continue`."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest("400 Bad Request", "bad request line")
    lengths: list[str] = []
    expect = False
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise _BadRequest("400 Bad Request", "bad header line")
        name, value = name.strip().lower(), value.strip()
        if name == "content-length":
            lengths.append(value)
        elif name == "transfer-encoding":
            raise _BadRequest("411 Length Required", "chunked bodies are not accepted")
        elif name == "expect":
            expect = value.lower() == "100-continue"
    if len(set(lengths)) > 1 or (lengths and not lengths[0].isdigit()):
        raise _BadRequest("400 Bad Request", "bad Content-Length")
    return parts[0], int(lengths[0]) if lengths else 0, expect


async def _always_replaced(wait_s: float) -> str | None:
    return None


class RayIntake:
    """A loopback HTTP endpoint for Ray's reporter: keeps only a sighting, and answers 200
    when the daemon reports that session itself (else 503, saying why)."""

    def __init__(
        self,
        host: str,
        port: int,
        on_sighting: Callable[[RaySighting], None],
        trusted_uids: Callable[[], set[int]],
        proc: Path = PROC_SELF,
        inherited: Sequence[socket.socket] = (),
        on_change: Callable[[RayIntake], None] | None = None,
        bind_retry_s: float = BIND_RETRY_S,
        why_not_replaced: Callable[[float], Awaitable[str | None]] = _always_replaced,
    ) -> None:
        self.host = host
        self.port = port
        self.on_sighting = on_sighting
        self.trusted_uids = trusted_uids
        self.proc = proc
        self.on_change = on_change  # told when the intake starts listening after all
        self.bind_retry_s = bind_retry_s
        # Why the daemon will not send its own report in place of Ray's (None: it will).
        self.why_not_replaced = why_not_replaced
        self._inherited = list(inherited)
        self._sock: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._retry: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._connections: set[asyncio.Task[None]] = set()
        self._throttles = {name: Throttle() for name in ("accept", "refused", "bad")}
        # Ray reports hourly, so every real report is logged; a loop is not.
        self._throttles["absorbed"] = Throttle(burst=ABSORBED_BURST)
        self._throttles["not_replaced"] = Throttle(burst=ABSORBED_BURST)
        self.problem: str | None = None  # why it does not listen, after a failed start()
        self.holder_uid: int | None = None  # who holds the port instead, when the kernel says
        self.taken = False  # another socket holds the port: Ray's reports may go there

    # -- listening ----------------------------------------------------------------

    @property
    def listening(self) -> bool:
        """Whether this daemon holds the intake's listening socket now."""
        return self._sock is not None

    async def start(self) -> bool:
        """Listen (systemd's socket, else our own); when the port is taken, log one warning
        naming its owner and try again every `bind_retry_s` meanwhile."""
        inherited = take_inherited(self._inherited, self.host, self.port)
        self._inherited = []
        if inherited is not None:
            self._listen(inherited, "systemd")
            return True
        if self._try_bind(log.warning):
            return True
        self._retry = asyncio.create_task(self._retry_bind())
        return False

    def _try_bind(self, say: Callable[..., object]) -> bool:
        try:
            sock = bind(self.host, self.port, BACKLOG)
        except OSError as exc:
            holder = exc.holder_uid if isinstance(exc, PortTaken) else None
            problem = exc.strerror or str(exc)
            if (problem, holder) != (self.problem, self.holder_uid):
                say(
                    "beside_ray.intake_unavailable",
                    address=host_port(self.host, self.port),
                    problem=problem,
                    held_by_uid=holder,
                    retry_s=self.bind_retry_s,
                )
            self.problem, self.holder_uid = problem, holder
            self.taken = isinstance(exc, PortTaken)
            return False
        self._listen(sock, "bound")
        return True

    def _listen(self, sock: socket.socket, how: str) -> None:
        sock.setblocking(False)
        self._sock = sock
        self.problem, self.holder_uid, self.taken = None, None, False
        self.port = sock.getsockname()[1]
        self._acceptor = asyncio.create_task(self._accept_loop())
        log.info("beside_ray.intake_listening", url=self.url, socket=how)

    async def _retry_bind(self) -> None:
        while True:
            await asyncio.sleep(self.bind_retry_s)
            if self._try_bind(log.info):
                if self.on_change is not None:
                    self.on_change(self)
                return

    @property
    def url(self) -> str:
        """What to put in RAY_USAGE_STATS_REPORT_URL when starting Ray."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def stop(self) -> None:
        """Stop listening and drop every open connection at once (no client is waited for)."""
        tasks = [t for t in (self._retry, self._acceptor, *self._connections) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._acceptor = self._retry = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def _accept_loop(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()  # a free slot first: the backlog waits in the kernel
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError as exc:
                self._slots.release()
                self._accept_failed(exc)
                await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            except BaseException:
                self._slots.release()
                raise
            task = asyncio.create_task(self._connection(conn))
            self._connections.add(task)
            task.add_done_callback(self._connection_done)

    def _connection_done(self, task: asyncio.Task[None]) -> None:
        self._connections.discard(task)
        self._slots.release()

    def _accept_failed(self, exc: OSError) -> None:
        event = "beside_ray.intake_accept_failed"
        accept_failed(self._throttles["accept"], event, exc, ACCEPT_RETRY_S)

    # -- one connection -----------------------------------------------------------

    async def _connection(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        with conn:
            conn.setblocking(False)
            try:
                async with asyncio.timeout(REQUEST_DEADLINE_S):
                    reply = await self._exchange(loop, conn)
                    await loop.sock_sendall(conn, reply)
            except TimeoutError:
                self._note("bad", problem=f"no complete request within {REQUEST_DEADLINE_S:g} s")
            except _BadRequest as exc:
                self._note("bad", problem=str(exc))
                with contextlib.suppress(OSError):
                    conn.send(_response(exc.status, {"accepted": False, "problem": str(exc)}))
            except OSError:
                pass  # the client went away: nothing to answer

    async def _exchange(self, loop: asyncio.AbstractEventLoop, conn: socket.socket) -> bytes:
        refusal = await self._refusal(conn)
        if refusal is not None:
            self._note("refused", reason=refusal)
            return _response("403 Forbidden", {"accepted": False, "problem": "not Ray's user"})
        data = b""
        while b"\r\n\r\n" not in data:
            if len(data) > MAX_HEAD:
                raise _BadRequest("431 Request Header Fields Too Large", "request head too large")
            chunk = await loop.sock_recv(conn, 4096)
            if not chunk:
                raise _BadRequest("400 Bad Request", "connection closed before the request end")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        method, length, expect = _parse_head(head)
        if method != "POST":
            raise _BadRequest("405 Method Not Allowed", "only POST is accepted")
        if length > MAX_BODY:
            raise _BadRequest("413 Content Too Large", f"body over {MAX_BODY} bytes")
        if expect and len(body) < length:
            await loop.sock_sendall(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
        while len(body) < length:  # the body may come in any number of segments
            chunk = await loop.sock_recv(conn, min(65536, length - len(body)))
            if not chunk:
                raise _BadRequest("400 Bad Request", "body shorter than its Content-Length")
            body += chunk
        sighting = parse_sighting(body[:length], int(time.time() * 1000))
        self.on_sighting(sighting)
        why_not = await self.why_not_replaced(VERDICT_WAIT_S)
        if why_not is not None:
            self._not_replaced(sighting, why_not)
            return _response(NOT_REPLACED_STATUS, {"accepted": False, "problem": why_not})
        self._absorbed(sighting)
        return _response("200 OK", {"accepted": True})

    async def _refusal(self, conn: socket.socket) -> str | None:
        """None when the client is a live socket of Ray's uid, else why it is refused.

        Asked of the kernel about that client's own socket (off the loop: where netlink is
        not available, the answer is a read of /proc/net/tcp)."""
        owner: Peer | None = await asyncio.to_thread(
            tcp_client_owner, conn.getpeername(), conn.getsockname(), self.proc
        )
        # inode 0: the client already closed its socket (an orphan or a time-wait entry):
        # nobody holds it, so it proves nothing. None: no such socket to be found.
        if owner is None or not owner.inode:
            return "the client's socket has no owner the kernel can name"
        if owner.uid == OVERFLOW_UID or owner.uid not in self.trusted_uids():
            return "the client is not Ray's user"
        return None

    def _absorbed(self, sighting: RaySighting) -> None:
        held = self._throttles["absorbed"].due(time.monotonic())
        if held is not None:
            log.info("beside_ray.report_absorbed", seq=sighting.seq_number, held_back=held)

    def _not_replaced(self, sighting: RaySighting, why_not: str) -> None:
        held = self._throttles["not_replaced"].due(time.monotonic())
        if held is not None:
            log.warning(
                "beside_ray.report_not_absorbed",
                seq=sighting.seq_number,
                reason=why_not,
                fix=NOT_REPLACED_FIX,
                held_back=held,
            )

    def _note(self, kind: str, **detail: object) -> None:
        held = self._throttles[kind].due(time.monotonic())
        if held is not None:
            event = "beside_ray.intake_refused" if kind == "refused" else "beside_ray.intake_bad"
            log.info(event, held_back=held, **detail)
