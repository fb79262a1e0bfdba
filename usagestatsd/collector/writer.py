"""The one writer: a thread that drains a queue of jobs in batches against the store.

Reports that arrive together are stored in one transaction (group commit): a handler waits
for its batch, so a 2xx always means "stored", and one commit serves many senders. The
queue is bounded by admission (`admit`): beyond it the collector answers 429.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from usagestatsd.collector.store import SqlStore
from usagestatsd.collector.validate import Accepted

MAX_BATCH = 500
log = structlog.get_logger()


@dataclass
class _Job:
    kind: str  # "ingest" (payload: the reports and their futures) or "call"
    payload: Any
    future: asyncio.Future[Any] | None = None


class Writer:
    """Serialises every write; `ingest` and `call` are awaited from the event loop."""

    def __init__(self, store: SqlStore, loop: asyncio.AbstractEventLoop) -> None:
        self._store = store
        self._loop = loop
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._pending = 0
        # Reports handed in during this turn of the event loop: they go to the thread as
        # one job (one wake-up of the thread, not one per report).
        self._gathered: list[tuple[Accepted, asyncio.Future[str]]] = []
        self._thread = threading.Thread(target=self._run, name="collector-writer", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Reports admitted and not yet answered."""
        return self._pending

    def admit(self, limit: int) -> bool:
        """Take a place for one report, or False when `limit` reports already hold one.

        Called before the handler awaits anything (reading the body): a check there and an
        increment after an await would let every concurrent request past the bound.
        The caller must `release()` the place when it has answered.
        """
        if self._pending >= limit:
            return False
        self._pending += 1
        return True

    def release(self) -> None:
        """Give back a place taken by `admit`."""
        self._pending -= 1

    async def ingest(self, item: Accepted) -> str:
        """Store one report; its outcome (store.NEW, DUPLICATE, CONFLICT or AHEAD)."""
        future: asyncio.Future[str] = self._loop.create_future()
        self._gathered.append((item, future))
        if len(self._gathered) == 1:
            self._loop.call_soon(self._hand_over)
        return await future

    def _hand_over(self) -> None:
        if self._gathered:
            gathered, self._gathered = self._gathered, []
            self._queue.put(_Job("ingest", gathered))

    async def call(self, work: Callable[[SqlStore], Any]) -> Any:
        """Run another write (deletion, retention) on the writer thread, in queue order."""
        future: asyncio.Future[Any] = self._loop.create_future()
        self._hand_over()  # the reports handed in before this call are written before it
        self._queue.put(_Job("call", work, future))
        return await future

    def stop(self) -> None:
        """Finish queued jobs, then stop the thread."""
        self._queue.put(None)
        self._thread.join(30)

    def _settle(self, future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
        self._settle_all([future], [value], error)

    def _settle_all(
        self, futures: list[asyncio.Future[Any]], values: list[Any], error: BaseException | None
    ) -> None:
        """Answer a whole batch with one wake-up of the event loop, not one per report."""

        def apply() -> None:
            for future, value in zip(futures, values, strict=True):
                if future.done():
                    continue
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(value)

        self._loop.call_soon_threadsafe(apply)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            job = self._queue.get()
            jobs: list[_Job] = []
            while job is not None:
                jobs.append(job)
                if len(jobs) >= MAX_BATCH:
                    break
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
            else:
                stopping = True
            self._process(jobs)

    def _process(self, jobs: list[_Job]) -> None:
        batch = [pair for j in jobs if j.kind == "ingest" for pair in j.payload]
        if batch:
            futures = [future for _, future in batch]
            try:
                now_ms = int(time.time() * 1000)
                outcomes = self._store.ingest([item for item, _ in batch], now_ms)
                self._settle_all(futures, outcomes, None)
            except Exception as exc:
                log.error("store.write_failed", error=type(exc).__name__, reports=len(batch))
                self._settle_all(futures, [None] * len(batch), exc)
                self._store.recover("write")
        for j in jobs:
            if j.kind == "call" and j.future is not None:
                try:
                    self._settle(j.future, j.payload(self._store), None)
                except Exception as exc:
                    log.error("store.write_failed", error=type(exc).__name__)
                    self._settle(j.future, None, exc)
                    self._store.recover("write")
