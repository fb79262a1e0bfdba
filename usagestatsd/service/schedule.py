"""When the next report is due, like Ray's reporter, on a monotonic clock.

Pure: the caller passes the monotonic time and a random source. Ray's rhythm: the first
report min(60, interval) seconds after start, then a random 0..interval wait (so a fleet
does not report in step), then one report per interval. Times are monotonic, so a wall
clock jump neither causes a burst of reports nor skips one; a cycle that overruns its slot
moves to the next slot instead of catching up.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Slot:
    """The next report time (monotonic seconds) and how many reports came before it."""

    due: float
    index: int


class Schedule:
    """Computes successive report slots for one session."""

    def __init__(self, interval_s: float, rng: random.Random) -> None:
        self.interval_s = interval_s
        self.rng = rng

    def first(self, start: float) -> Slot:
        """The first slot after a session is found (or the daemon starts)."""
        return Slot(start + min(60.0, self.interval_s), 0)

    def after(self, slot: Slot, now: float) -> Slot:
        """The slot after `slot`; if `now` is already past it, the first future one on the grid."""
        # After the first report, a random offset so that a fleet does not report in step.
        step = self.rng.uniform(0.0, self.interval_s) if slot.index == 0 else self.interval_s
        due = slot.due + step
        if due <= now:
            missed = math.floor((now - due) / self.interval_s) + 1
            due += missed * self.interval_s
        return Slot(due, slot.index + 1)
