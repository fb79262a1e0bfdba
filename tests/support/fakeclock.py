"""A clock for driving the daemon's loop in-process: time moves only when the test says so.

`FakeClock` is the daemon's `LoopClock` on virtual time: a coroutine that sleeps is parked
until the test moves the clock to (or past) its deadline. `Driver` moves it from one
deadline to the next, each time after the daemon has settled (every coroutine parked, no
report cycle running: a cycle's HTTP and Unix socket I/O is real and takes real time).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Callable

from usagestatsd.service.process import Daemon

SETTLE_STEPS = 50  # event loop turns for parked coroutines to move on after a wake-up


class FakeClock:
    """Virtual monotonic and wall time; every deadline it was woken at is recorded."""

    def __init__(self, monotonic: float = 1000.0, wall: float = 1_795_823_459.0) -> None:
        self.now = monotonic
        self.wall_offset = wall - monotonic
        self.wakeups: list[float] = []  # the virtual times the clock moved to, in order
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now + self.wall_offset

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self.now:
            await asyncio.sleep(0)
            return
        woken = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._order), woken))
        await woken  # cancelled: its entry is dropped when it comes up

    async def wait_until(self, event: asyncio.Event, deadline: float) -> None:
        if event.is_set():
            return
        if deadline == math.inf:
            await event.wait()
            return
        waits = {
            asyncio.ensure_future(event.wait()),
            asyncio.ensure_future(self.sleep_until(deadline)),
        }
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    def next_deadline(self) -> float | None:
        """The earliest deadline a coroutine sleeps until, if any."""
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None

    def move_to(self, when: float) -> None:
        """Set the time to `when` and wake every coroutine whose deadline has come."""
        self.now = max(self.now, when)
        woke = False
        while self._sleepers and self._sleepers[0][0] <= self.now:
            _, _, woken = heapq.heappop(self._sleepers)
            if not woken.done():
                woken.set_result(None)
                woke = True
        if woke:
            self.wakeups.append(self.now)


class Driver:
    """Runs a daemon's loop from deadline to deadline on a FakeClock."""

    def __init__(
        self, daemon: Daemon, clock: FakeClock, settled: Callable[[], object] | None = None
    ) -> None:
        self.daemon = daemon
        self.clock = clock
        self.settled = settled  # called each time the daemon settled (e.g. read its messages)

    async def settle(self) -> None:
        """Until the daemon waits only for time or events: parked, no cycle running."""
        while True:
            for _ in range(SETTLE_STEPS):
                await asyncio.sleep(0)
            if not self.daemon.busy:
                if self.settled is not None:
                    self.settled()
                return
            await asyncio.sleep(0.005)  # a cycle's real I/O: give it real time

    async def step(self) -> float:
        """Settle, move to the next deadline, settle again; the new virtual time."""
        await self.settle()
        deadline = self.clock.next_deadline()
        assert deadline is not None, "the daemon sleeps with no deadline: time cannot move"
        self.clock.move_to(deadline)
        await self.settle()
        return self.clock.now

    async def run_until(self, done: Callable[[], bool], limit_s: float) -> None:
        """Step until `done()`; fails if that takes more than `limit_s` of virtual time."""
        end = self.clock.now + limit_s
        await self.settle()
        while not done():
            assert await self.step() <= end, f"not done within {limit_s} s of virtual time"

    async def run_for(self, span_s: float) -> None:
        """Step through every deadline within the next `span_s` of virtual time."""
        end = self.clock.now + span_s
        await self.settle()
        while (deadline := self.clock.next_deadline()) is not None and deadline <= end:
            await self.step()
        self.clock.move_to(end)
        await self.settle()
