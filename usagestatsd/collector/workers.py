"""The validation processes, each on its own socket pair, driven from the event loop.

Not threads: the guard's patterns run in C without releasing the GIL, so a string that is
costly for them would stop the event loop and every other check for as long as it takes.
Separate processes are scheduled by the kernel, so an honest report is checked while
costly ones are, and the event loop only waits on a socket. Forked from a server that
imported only the validation modules, never from the collector's process (its threads and
sockets).

Three. The one event loop feeds them at most a few thousand reports a second, and one
process checks an honest report in 0.1 to 0.2 ms, so more would only wait; a costly body
holds one worker for tens of milliseconds, and the other two keep checking. On 2 cores
(bench/collector_ratio.py, paired runs) six were no faster and spent about 10 % more CPU
per report, and each costs about 20 MiB. Not at a lower priority: that takes
setpriority(2), which the shipped unit denies (SystemCallFilter=~@resources).

Not a ProcessPoolExecutor: its two threads (one hands work to a queue all workers share,
one reads results) cost the collector's process about as much per batch as the socket
writes and reads done here on the loop. A batch goes to the worker with the fewest
batches in hand (an idle one when there is one); a worker that dies fails its own batches
and is replaced on the next one.
"""

from __future__ import annotations

import asyncio
import collections
import multiprocessing
import pickle
import socket
from collections.abc import Sequence
from typing import Any

from usagestatsd.collector.validate import Accepted, Rejected, validate_many

PROCESSES = 3
_LENGTH = 4  # bytes of the big-endian length before each pickled message

Verdicts = list[Accepted | Rejected | Exception]


class WorkerGone(Exception):
    """A validation process ended before it answered."""


def serve(sock: socket.socket) -> None:
    """A worker's loop: read a batch, answer its verdicts; return when the collector closes."""
    with sock, sock.makefile("rb") as reader:
        while True:
            head = reader.read(_LENGTH)
            if len(head) < _LENGTH:
                return
            raws, max_bytes = pickle.loads(reader.read(int.from_bytes(head, "big")))
            answer = pickle.dumps(validate_many(raws, max_bytes), pickle.HIGHEST_PROTOCOL)
            sock.sendall(len(answer).to_bytes(_LENGTH, "big") + answer)


class _Worker(asyncio.Protocol):
    """One process and its socket: batches are answered in the order they were sent."""

    def __init__(self, process: Any) -> None:
        self.process = process
        self.waiting: collections.deque[asyncio.Future[Verdicts]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()

    @property
    def alive(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, raws: Sequence[bytes], max_bytes: int) -> asyncio.Future[Verdicts]:
        assert self.transport is not None
        message = pickle.dumps((list(raws), max_bytes), pickle.HIGHEST_PROTOCOL)
        future: asyncio.Future[Verdicts] = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.transport.write(len(message).to_bytes(_LENGTH, "big") + message)
        return future

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= _LENGTH:
            size = int.from_bytes(self._buffer[:_LENGTH], "big")
            if len(self._buffer) < _LENGTH + size:
                return
            verdicts = pickle.loads(self._buffer[_LENGTH : _LENGTH + size])
            del self._buffer[: _LENGTH + size]
            future = self.waiting.popleft()
            if not future.done():
                future.set_result(verdicts)

    def connection_lost(self, exc: Exception | None) -> None:
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(WorkerGone("a validation process ended"))
        self.process.join(0)


class ValidatorPool:
    """`await check(raws, max_bytes)`: validate.validate_many in one of the processes."""

    def __init__(self, processes: int = PROCESSES) -> None:
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(["usagestatsd.collector.validate"])
        self._size = processes
        self._workers: list[_Worker] = []
        self._spawning = asyncio.Lock()

    async def start(self) -> None:
        """Start the processes now (not on the first report), or replace those that died."""
        async with self._spawning:
            self._workers = [w for w in self._workers if w.alive]
            while len(self._workers) < self._size:
                self._workers.append(await self._spawn())

    async def check(self, raws: Sequence[bytes], max_bytes: int) -> Verdicts:
        """The verdict on each body (or the exception its check raised)."""
        if len(self._workers) < self._size or not all(w.alive for w in self._workers):
            await self.start()
        # Those that died while others were started are left for the next start.
        alive = [w for w in self._workers if w.alive]
        if not alive:
            raise WorkerGone("no validation process is running")
        worker = min(alive, key=lambda w: len(w.waiting))
        return await worker.send(raws, max_bytes)

    def close(self) -> None:
        """Close every socket: each process reads its end and exits."""
        for worker in self._workers:
            if worker.transport is not None:
                worker.transport.close()
        self._workers = []

    async def _spawn(self) -> _Worker:
        ours, theirs = socket.socketpair()
        process = self._context.Process(target=serve, args=(theirs,), daemon=True)
        try:
            process.start()  # a few milliseconds, at start and after a worker died
        finally:
            theirs.close()
        worker = _Worker(process)
        await asyncio.get_running_loop().connect_accepted_socket(lambda: worker, ours)
        return worker
