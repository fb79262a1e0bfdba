"""The wall clock jumping by hours: no burst of reports, no missed one (schedule and loop)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from tests.faults.helpers import named
from tests.support.fakeclock import Driver, FakeClock
from tests.support.processes import FREE_INTAKE
from tests.support.servers import ScriptedEndpoint
from usagestatsd.base.sdnotify import Notifier
from usagestatsd.config.settings import Settings
from usagestatsd.contract.guard import KnownIdentifiers
from usagestatsd.cycle.pipeline import Disclosure
from usagestatsd.demo import DemoCluster
from usagestatsd.service.process import build_daemon
from usagestatsd.service.schedule import Schedule

HOUR = 3600.0
JUMPS = (0.0, -5 * HOUR, 7 * HOUR, -26 * HOUR, 3 * HOUR, -HOUR, 30 * 24 * HOUR)


class JumpingClock(FakeClock):
    """Virtual monotonic time; the wall clock jumps by hours, back and forth, at every reading."""

    def __init__(self) -> None:
        super().__init__(wall=1_795_823_459.0 + 24 * HOUR)  # Ray's grace long over
        self.readings = 0

    def time(self) -> float:
        """Wall time, off by a different number of hours each time it is read."""
        self.readings += 1
        return super().time() + JUMPS[self.readings % len(JUMPS)]


@settings(max_examples=200, deadline=None)
@given(
    interval=st.floats(min_value=0.05, max_value=7 * 24 * HOUR),
    start=st.floats(min_value=0, max_value=1e9),
    durations=st.lists(st.floats(min_value=0, max_value=3.0), min_size=1, max_size=60),
    seed=st.integers(0, 2**32),
)
def test_schedule_has_no_burst_and_no_gap(
    interval: float, start: float, durations: list[float], seed: int
) -> None:
    """Slots sit on one grid: a cycle (of any length) never causes a burst or skips a free slot."""
    schedule = Schedule(interval, random.Random(seed))
    slot = schedule.first(start)
    assert slot.due == start + min(60.0, interval)
    now = slot.due
    starts = [now]
    for fraction in durations:
        finished = now + fraction * interval  # a cycle taking up to three intervals
        nxt = schedule.after(slot, finished)
        tol = 1e-9 * (abs(finished) + interval)  # float rounding on large monotonic values
        assert nxt.due >= finished - tol and nxt.index == slot.index + 1
        if slot.index >= 1:
            # On the grid, and the first grid point after the cycle ended: never one missed.
            steps = (nxt.due - slot.due) / interval
            assert abs(steps - round(steps)) * interval <= tol and round(steps) >= 1
            assert nxt.due - finished <= interval + tol
        else:
            assert nxt.due - slot.due <= interval + tol or nxt.due - finished <= interval + tol
        slot, now = nxt, nxt.due
        starts.append(now)
    gaps = [b - a for a, b in pairwise(starts[1:])]
    assert all(gap >= interval - 1e-9 * (abs(now) + interval) for gap in gaps)  # no burst


async def test_loop_ignores_wall_clock_jumps(
    make_settings: Callable[..., Settings],
    endpoint: ScriptedEndpoint,
    demo_session: DemoCluster,
) -> None:
    """The real loop with a wall clock jumping hours at every reading keeps its exact rhythm."""
    settings = make_settings(
        {
            "RAY_USAGE_STATS_REPORT_URL": endpoint.url,
            "RAY_USAGE_STATS_REPORT_INTERVAL_S": str(int(HOUR)),
            "USAGESTATSD_RAY_INTAKE": FREE_INTAKE,
        }
    )
    clock = JumpingClock()
    start = clock.now
    daemon = build_daemon(
        settings, Notifier(None), Disclosure(KnownIdentifiers()), clock=clock, rng=random.Random(3)
    )
    driver = Driver(daemon, clock)
    sent_at: list[float] = []  # the virtual monotonic time of each report

    def note_reports() -> None:
        sent_at.extend([clock.now] * (len(endpoint.received) - len(sent_at)))

    driver.settled = note_reports
    with capture_logs() as events:
        serving = asyncio.create_task(daemon.serve())
        try:
            await driver.run_until(lambda: len(endpoint.received) >= 10, 10 * HOUR)
        finally:
            daemon.stop_requested.set()
            assert await serving == 0
    # A loop led by the jumping wall clock would sleep for hours or send in bursts: the
    # slots are those of the monotonic clock, exactly.
    schedule = Schedule(HOUR, random.Random(3))
    slots = [schedule.first(start)]
    while len(slots) < 10:
        slots.append(schedule.after(slots[-1], slots[-1].due))
    assert sent_at == [slot.due for slot in slots]
    stamps = [body["collect_timestamp_ms"] for body in endpoint.bodies()]
    assert max(stamps) - min(stamps) > 2 * HOUR * 1000  # the wall clock really did jump
    assert [b["seq_number"] for b in endpoint.bodies()] == list(range(len(stamps)))
    assert named(events, "cycle.crashed") == []


def test_grace_never_waits_hours_after_a_backward_jump() -> None:
    """The wait for Ray's first report is at most its 75 s, whatever the wall clock says."""
    from usagestatsd.cycle.beside_ray import Neighbour

    neighbour = Neighbour("auto")
    start = 1_795_823_459_121
    assert neighbour.grace_left_s(start, start + 10_000) == 65.0
    assert neighbour.grace_left_s(start, start + 100_000) == 0.0
    assert neighbour.grace_left_s(start, start - int(5 * HOUR * 1000)) == 0.0
    assert neighbour.grace_left_s(4_102_444_800_000, start) == 0.0  # a start in 2100
