"""The session watch (inotify on Ray's temp root): events when sessions appear, and only then."""

from __future__ import annotations

import asyncio
from pathlib import Path

from usagestatsd.facts.watch import SessionWatch


async def test_watch_follows_the_temp_root_from_its_creation(tmp_path: Path) -> None:
    """Missing temp root: its creation and then a session are seen; otherwise all is quiet."""
    root = tmp_path / "ray"
    seen = asyncio.Event()
    changes: list[int] = []

    def changed() -> None:
        changes.append(1)
        seen.set()

    watch = SessionWatch(root, changed)
    reads = 0
    readable = watch._readable

    def counting() -> None:
        nonlocal reads
        reads += 1
        readable()

    watch._readable = counting  # type: ignore[method-assign]
    assert watch.start(asyncio.get_running_loop()) is None
    try:
        root.mkdir()
        await asyncio.wait_for(seen.wait(), 10)
        seen.clear()
        (root / "session_2026-01-01_00-00-00_000000_1").mkdir()
        await asyncio.wait_for(seen.wait(), 10)
        seen.clear()
        (root / "unrelated").write_text("x")  # not a session: no change reported
        (tmp_path / "elsewhere").mkdir()  # beside the temp root: not even read
        await asyncio.sleep(0.5)
        # The re-arm from the parent to the temp root must not feed on its own IN_IGNORED
        # (that was a busy loop): a handful of reads in all, not thousands.
        assert reads <= 5, reads
        assert len(changes) == 2
    finally:
        watch.close()


async def test_a_burst_of_changes_is_one_change_per_gap(tmp_path: Path) -> None:
    """Thousands of session-like entries made and removed: one change at once, then one
    per gap for all that queued meanwhile, and the last of them is never lost."""
    root = tmp_path / "ray"
    root.mkdir()
    changes: list[float] = []
    loop = asyncio.get_running_loop()
    watch = SessionWatch(root, lambda: changes.append(loop.time()), min_gap_s=0.3)
    assert watch.start(loop) is None
    try:
        for i in range(1000):
            (root / f"session_{i}").mkdir()
            (root / f"session_{i}").rmdir()
            if i % 200 == 0:
                await asyncio.sleep(0)  # let the loop read, as it would under real churn
        last = loop.time()
        (root / "session_last").mkdir()
        await asyncio.sleep(1.0)
        assert 1 <= len(changes) <= 5, len(changes)  # not one per entry
        assert changes[-1] >= last  # what queued during a pause is passed on after it
        count = len(changes)
        await asyncio.sleep(0.5)
        assert len(changes) == count  # quiet: no more changes, no more reads
    finally:
        watch.close()
