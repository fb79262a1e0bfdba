"""Saying something at most so often: the throttle both listeners (the intake, the
collector's) log through, and their one warning for a failed accept."""

from __future__ import annotations

import errno
import time
from typing import Any

import structlog

LOG_INTERVAL_S = 60.0
# Out of descriptors or memory is the machine's state, not a bug: a warning, no traceback.
RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

log = structlog.get_logger()


class Throttle:
    """Say something at most `burst` times in a row, then once per interval (a token bucket);
    count how often it was held back in between."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S, burst: int = 1) -> None:
        self.interval_s = interval_s
        self.burst = burst
        self._tokens = float(burst)
        self._last: float | None = None
        self.held_back = 0

    def due(self, now: float) -> int | None:
        """None: stay quiet. Otherwise how many occurrences were held back before this one."""
        if self._last is not None:
            refill = (now - self._last) / self.interval_s
            self._tokens = min(float(self.burst), self._tokens + refill)
        self._last = now
        if self._tokens < 1.0:
            self.held_back += 1
            return None
        self._tokens -= 1.0
        held, self.held_back = self.held_back, 0
        return held


def accept_failed(
    throttle: Throttle, event: str, exc: OSError, retry_s: float, **more: Any
) -> None:
    """One line for a failed accept(), at most once per the throttle's interval."""
    held = throttle.due(time.monotonic())
    if held is None:
        return
    level = log.warning if exc.errno in RESOURCE_ERRORS else log.info
    level(event, problem=exc.strerror or str(exc), retry_s=retry_s, held_back=held, **more)
