"""Figure 2: time from spawn to READY=1, against `python -c "import aiohttp"`."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from bench.harness import PY, NotifySocket, daemon_env, start_daemon, stop
from bench.results import ReadyResult


def measure_ready(tmp: Path, runs: int) -> ReadyResult:
    """`runs` alternating runs of each, after one warm-up of each (no Ray session present)."""
    (tmp / "ray").mkdir()
    notify = NotifySocket(tmp / "notify")
    env = daemon_env(tmp, tmp / "ray", "http://127.0.0.1:9/", 3600, notify.path)

    def one_daemon() -> float:
        t0 = time.monotonic()
        proc = start_daemon(tmp, env)
        try:
            return notify.wait_for("READY=1", 30, after=t0) - t0
        finally:
            stop(proc)

    def one_import() -> float:
        t0 = time.monotonic()
        subprocess.run([PY, "-c", "import aiohttp"], check=True, cwd=tmp)
        return time.monotonic() - t0

    one_daemon(), one_import()  # warm the page cache and the bytecode caches
    daemon_times, import_times = [], []
    for _ in range(runs):
        import_times.append(one_import())
        daemon_times.append(one_daemon())
    notify.close()
    return ReadyResult(daemon_times, import_times, Path(PY).name)
