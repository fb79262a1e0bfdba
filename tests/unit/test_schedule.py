"""The schedule: Ray's rhythm, on a monotonic clock, with no bursts after an overrun."""

from __future__ import annotations

import random

from usagestatsd.service.schedule import Schedule


def test_rays_rhythm() -> None:
    """First after min(60, interval), then a random 0..interval, then every interval."""
    schedule = Schedule(3600, random.Random(7))
    first = schedule.first(1000.0)
    assert first.due == 1060.0
    second = schedule.after(first, first.due)
    assert 1060.0 <= second.due <= 1060.0 + 3600
    third = schedule.after(second, second.due)
    assert third.due == second.due + 3600


def test_short_interval_first_report() -> None:
    """With an interval under a minute, the first report comes after one interval."""
    assert Schedule(10, random.Random(1)).first(0.0).due == 10.0


def test_overrun_skips_to_next_slot_without_burst() -> None:
    """A cycle that ran past several slots resumes on the grid, once, in the future."""
    schedule = Schedule(100, random.Random(1))
    slot = schedule.after(schedule.after(schedule.first(0.0), 60.0), 200.0)
    late_now = slot.due + 350.0
    nxt = schedule.after(slot, late_now)
    assert late_now < nxt.due <= late_now + 100
    assert round(nxt.due - slot.due, 6) % 100 == 0


def test_fleet_members_spread_out() -> None:
    """Different random sources give different second-report times."""
    seconds = {
        Schedule(3600, random.Random(seed))
        .after(Schedule(3600, random.Random(seed)).first(0.0), 60.0)
        .due
        for seed in range(20)
    }
    assert len(seconds) == 20
