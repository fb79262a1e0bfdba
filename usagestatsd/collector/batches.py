"""Received bodies go to the validation processes in batches: one round trip for many.

Each trip to a worker process costs the event loop's process a pickle, a pipe write, a
wake-up of the pool's thread and of the loop, whatever the body; under load that cost was
as large as the checks themselves. The bodies handed in during one turn of the event loop
travel together (at most MAX_BATCH of them, MAX_BATCH_BYTES in all, so a body that is
costly to check delays only a few others), and the answers come back in one list.
"""

from __future__ import annotations

import asyncio

from usagestatsd.collector.validate import Accepted, Rejected
from usagestatsd.collector.workers import ValidatorPool

MAX_BATCH = 16
MAX_BATCH_BYTES = 128 << 10

Result = Accepted | Rejected


class BatchValidator:
    """`await check(raw)`: the body's verdict, checked in a worker process with others."""

    def __init__(self, pool: ValidatorPool, max_bytes: int) -> None:
        self._pool = pool
        self._max_bytes = max_bytes
        self._waiting: list[tuple[bytes, asyncio.Future[Result]]] = []
        self._bytes = 0
        self._flush_planned = False
        # The loop keeps only a weak reference to a task: each batch's is held here until done.
        self._in_flight: set[asyncio.Future[list[Result | Exception]]] = set()

    async def check(self, raw: bytes) -> Result:
        """Validate one body (validate.validate); raises what the pool raises."""
        loop = asyncio.get_running_loop()
        verdict: asyncio.Future[Result] = loop.create_future()
        self._waiting.append((raw, verdict))
        self._bytes += len(raw)
        if len(self._waiting) >= MAX_BATCH or self._bytes >= MAX_BATCH_BYTES:
            self._flush()
        elif not self._flush_planned:
            # After the callbacks already due in this turn: the bodies they complete join.
            self._flush_planned = True
            loop.call_soon(self._flush)
        return await verdict

    def _flush(self) -> None:
        self._flush_planned = False
        batch, self._waiting, self._bytes = self._waiting, [], 0
        if not batch:
            return
        raws = [raw for raw, _ in batch]
        done = asyncio.ensure_future(self._pool.check(raws, self._max_bytes))
        self._in_flight.add(done)
        done.add_done_callback(self._in_flight.discard)
        done.add_done_callback(lambda results: _settle(batch, results))


def _settle(
    batch: list[tuple[bytes, asyncio.Future[Result]]],
    results: asyncio.Future[list[Result | Exception]],
) -> None:
    """Hand each waiting handler its verdict (or the pool's error); a handler that has
    gone away (its client disconnected) has a cancelled future, left as it is."""
    if results.cancelled():
        for _, verdict in batch:
            verdict.cancel()
        return
    error = results.exception()
    verdicts: list[Result | Exception | None] = (
        [None] * len(batch) if error else list(results.result())
    )
    for (_, verdict), value in zip(batch, verdicts, strict=True):
        if verdict.done():
            continue
        if error is not None:
            verdict.set_exception(error)
        elif isinstance(value, Exception):
            verdict.set_exception(value)
        elif value is not None:
            verdict.set_result(value)
