"""The one way tests wait for something: poll a predicate until it holds or time runs out.

`wait_until` blocks (for tests and harnesses without an event loop, or whose servers run
in threads); `until` is the same for async tests, whose servers share the event loop and
so must not be blocked. Both fail with an AssertionError naming what was awaited, or,
with `fail=False`, return False and leave the verdict to the caller.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

INTERVAL_S = 0.05


@dataclass
class _Poll:
    """One wait: `settled()` is None while there is time left to wait, else the verdict."""

    predicate: Callable[[], object]
    timeout: float
    what: str
    detail: Callable[[], str] | None
    fail: bool

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.timeout

    def settled(self) -> bool | None:
        if self.predicate():
            return True
        if time.monotonic() <= self.deadline:
            return None
        if not self.fail:
            return False
        text = f"timed out after {self.timeout} s waiting for: {self.what}"
        raise AssertionError(text + (f"\n{self.detail()}" if self.detail else ""))


def wait_until(
    predicate: Callable[[], object],
    timeout: float = 20.0,
    what: str = "the condition",
    detail: Callable[[], str] | None = None,
    *,
    interval: float = INTERVAL_S,
    fail: bool = True,
) -> bool:
    """Block until `predicate()` is true (True); after `timeout` s fail naming `what` (and
    `detail()`), or return False with `fail=False`."""
    poll = _Poll(predicate, timeout, what, detail, fail)
    while (verdict := poll.settled()) is None:
        time.sleep(interval)
    return verdict


async def until(
    predicate: Callable[[], object],
    timeout: float = 20.0,
    what: str = "the condition",
    detail: Callable[[], str] | None = None,
    *,
    interval: float = INTERVAL_S,
    fail: bool = True,
) -> bool:
    """`wait_until` without blocking the event loop the test's servers run on."""
    poll = _Poll(predicate, timeout, what, detail, fail)
    while (verdict := poll.settled()) is None:
        await asyncio.sleep(interval)
    return verdict
