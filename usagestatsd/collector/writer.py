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
    kind: str  # "ingest" or "call"
    payload: Any
    future: asyncio.Future[Any]


class Writer:
    """Serialises every write; `ingest` and `call` are awaited from the event loop."""

    def __init__(self, store: SqlStore, loop: asyncio.AbstractEventLoop) -> None:
        self._store = store
        self._loop = loop
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._pending = 0
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
        self._queue.put(_Job("ingest", item, future))
        return await future

    async def call(self, work: Callable[[SqlStore], Any]) -> Any:
        """Run another write (deletion, retention) on the writer thread, in queue order."""
        future: asyncio.Future[Any] = self._loop.create_future()
        self._queue.put(_Job("call", work, future))
        return await future

    def stop(self) -> None:
        """Finish queued jobs, then stop the thread."""
        self._queue.put(None)
        self._thread.join(30)

    def _settle(self, future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
        def apply() -> None:
            if future.done():
                return
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
        batch = [j for j in jobs if j.kind == "ingest"]
        if batch:
            try:
                now_ms = int(time.time() * 1000)
                outcomes = self._store.ingest([j.payload for j in batch], now_ms)
                for j, outcome in zip(batch, outcomes, strict=True):
                    self._settle(j.future, outcome, None)
            except Exception as exc:
                log.error("store.write_failed", error=type(exc).__name__, reports=len(batch))
                for j in batch:
                    self._settle(j.future, None, exc)
                self._store.recover("write")
        for j in jobs:
            if j.kind == "call":
                try:
                    self._settle(j.future, j.payload(self._store), None)
                except Exception as exc:
                    log.error("store.write_failed", error=type(exc).__name__)
                    self._settle(j.future, None, exc)
                    self._store.recover("write")
