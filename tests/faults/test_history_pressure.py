"""The report history under pressure: far over its cap, torn lines, memory while compacting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.faults.helpers import fill, tmpfs
from usagestatsd.store.history import History, HistoryFull, Record

BODY = json.dumps({"pad": "y" * 1000})


def record(n: int) -> Record:
    """The n-th report record (about 1.2 KB)."""
    return Record(
        "report", 1_795_000_000_000 + n, "0f" * 28, "https://x/", "sent", 200, None, "ab" * 32, BODY
    )


def test_history_far_over_its_cap_is_compacted(tmp_path: Path) -> None:
    """A history many times its cap (the cap was lowered) is cut back, not left to grow."""
    lines = [record(n).to_line() for n in range(3000)]  # about 3.6 MB
    lines.insert(100, b'{"torn": \n')
    (tmp_path / "history.jsonl").write_bytes(b"".join(lines) + b'{"kind": "rep')
    history = History(tmp_path, max_bytes=64 << 10)
    history.append([record(3000)], 1_795_000_000_000 + 3000)
    loaded = history.load()
    size = (tmp_path / "history.jsonl").stat().st_size
    assert size <= (64 << 10) and loaded.skipped == 0
    assert [r.time_ms for r in loaded.records][-1] == 1_795_000_000_000 + 3000
    times = [r.time_ms for r in loaded.records]
    assert times == sorted(times) and len(times) == size // len(lines[0])


MEMORY_PROBE = textwrap.dedent(
    """
    import json, sys, tempfile
    from pathlib import Path
    from tests.faults.test_history_pressure import record
    from usagestatsd.store.history import History

    def rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1])

    history = History(Path(tempfile.mkdtemp()), max_bytes=4 << 20)
    for n in range(9000):
        history.append([record(n)], 1_795_000_000_000 + n)
        if n == 1000:
            start = rss()
    print(json.dumps({"start": start, "end": rss()}))
    """
)


@pytest.mark.slow
def test_compaction_does_not_grow_memory() -> None:
    """Compacting a 4 MiB history (three times here) leaves resident memory where it was."""
    root = Path(__file__).parents[2]
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE], capture_output=True, text=True, cwd=root, timeout=120
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["end"] - figures["start"] < 2048, figures  # KiB; reading it whole: ~12 MB


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_history_keeps_its_reserve_and_gives_way(tmp_path: Path) -> None:
    """Appends keep the free-space reserve by dropping the oldest records, or are refused."""
    with tmpfs(tmp_path / "fs", "256k") as directory:
        history = History(directory, max_bytes=10 << 20)
        dropped = 0
        for n in range(400):  # about 440 KB of records into 256 KiB
            dropped += history.append([record(n)], 1_795_000_000_000 + n)
        assert dropped > 0 and history.free_bytes() >= history.reserve_bytes
        newest = history.load().records[-1].time_ms
        assert newest == 1_795_000_000_000 + 399  # the newest record always gets in
        fill(directory)  # someone else takes the rest: the next append makes its own room
        # (on a full disk nothing can be kept: the kept part is rewritten beside the old one)
        assert history.append([record(400)], 1_795_000_000_400) > 0
        assert history.free_bytes() >= history.reserve_bytes
        assert history.load().records[-1].time_ms == 1_795_000_000_400
        fill(directory)  # a state save meeting ENOSPC asks the history to give way
        assert history.give_way(history.reserve_bytes, 1_795_000_000_400) == 1
        assert history.free_bytes() >= 4096  # a page for state.json's rewrite
        fill(directory)
        empty = History(directory / "other")  # nothing of its own left to drop
        with pytest.raises(HistoryFull):
            empty.append([record(401)], 1_795_000_000_401)
        assert all(json.loads(line) for line in history.path.read_bytes().splitlines())
