"""The report history under pressure: far over its cap, torn lines, memory while compacting."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from usagestatsd.history import History, Record

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
    from tests.faults.test_history import record
    from usagestatsd.history import History

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
