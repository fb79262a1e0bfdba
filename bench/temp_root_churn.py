"""What a neighbour churning Ray's world-writable temp root costs the daemon.

    .venv/bin/python -m bench.temp_root_churn                     # this worktree's code
    .venv/bin/python -m bench.temp_root_churn --code /tmp/old     # other code (before/after)

Runs the real daemon (`python -m usagestatsd run`, from `--code`; no report due) on a demo
session, then measures its own CPU time (user + system, /proc/<pid>/stat) and its read
system calls (/proc/<pid>/io syscr: a look at the temp root reads every visible process's
command line) over a quiet window, and over a window of the same length while uid nobody
makes and removes `session_*` directories in the temp root as fast as it can. Needs root
(the churner runs as nobody). `make bench` runs it too (`measure_churn`); target: under
1 s of the daemon's CPU per 20 s of churn.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.faults.test_tamper import churn, read_syscalls  # noqa: E402
from tests.faults.test_trust import cpu_seconds, open_like_ray  # noqa: E402
from tests.support.hostile import running_as  # noqa: E402
from tests.support.processes import await_line, daemon_env, start_daemon  # noqa: E402
from tests.support.servers import ScriptedEndpoint  # noqa: E402
from usagestatsd.demo import DemoCluster, make_session_dir  # noqa: E402

TARGET_CPU_S = 1.0  # per 20 s of churn


@dataclass(frozen=True)
class ChurnResult:
    """The daemon's own CPU seconds and read calls, quiet and under churn, per window."""

    window_s: float
    quiet_cpu_s: float
    churn_cpu_s: float
    quiet_reads: int
    churn_reads: int


async def _measure(base: Path, code: Path, window_s: float) -> ChurnResult:
    root = base / "ray"
    session = make_session_dir(root)
    cluster = DemoCluster(session)
    await cluster.start()
    open_like_ray(root, session)
    endpoint = ScriptedEndpoint()
    await endpoint.start()
    env = daemon_env(root, base / "state", endpoint.url, RAY_USAGE_STATS_REPORT_INTERVAL_S="3600")
    env["PYTHONPATH"] = str(code)
    daemon = start_daemon(env)
    try:
        pid = daemon.proc.pid
        await await_line(daemon, "session.found", 60)
        await asyncio.sleep(2.0)  # start-up is over
        cpu, reads = cpu_seconds(pid), read_syscalls(pid)
        await asyncio.sleep(window_s)
        quiet_cpu, quiet_reads = cpu_seconds(pid) - cpu, read_syscalls(pid) - reads
        cpu, reads = cpu_seconds(pid), read_syscalls(pid)
        with running_as(churn(root)):
            await asyncio.sleep(window_s)
        churn_cpu, churn_reads = cpu_seconds(pid) - cpu, read_syscalls(pid) - reads
    finally:
        daemon.stop(10)
        await cluster.stop()
        await endpoint.stop()
    return ChurnResult(window_s, quiet_cpu, churn_cpu, quiet_reads, churn_reads)


def measure_churn(window_s: float = 20.0, code: Path = ROOT) -> ChurnResult:
    """The figures, with the daemon from `code` (a checkout)."""
    if os.geteuid() != 0:
        raise PermissionError("the churner runs as uid nobody: run as root")
    base = Path(tempfile.mkdtemp(prefix="usd-churn-", dir="/tmp"))  # reachable by nobody
    here = Path.cwd()
    os.chdir(code)  # `python -m usagestatsd` imports from the working directory first
    try:
        return asyncio.run(_measure(base, code.resolve(), window_s))
    finally:
        os.chdir(here)
        shutil.rmtree(base, ignore_errors=True)


def churn_lines(result: ChurnResult | None) -> list[str]:
    """The section `make bench` adds to docs/performance.md."""
    if result is None:
        return []
    per_20 = result.churn_cpu_s * 20 / result.window_s
    verdict = "met" if per_20 < TARGET_CPU_S else "NOT met"
    return [
        "",
        "### Temp-root churn (bench/temp_root_churn.py)",
        "",
        f"uid nobody makes and removes `session_*` directories in Ray's temp root for "
        f"{result.window_s:g} s: the daemon used {result.churn_cpu_s:.2f} s of CPU and "
        f"{result.churn_reads:,} read calls (quiet, the same window: "
        f"{result.quiet_cpu_s:.2f} s, {result.quiet_reads:,}). Target: under "
        f"{TARGET_CPU_S:g} s per 20 s of churn: {verdict}.",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout whose daemon runs")
    parser.add_argument("--window", type=float, default=20.0, help="seconds per window")
    args = parser.parse_args()
    result = measure_churn(args.window, args.code)
    print("\n".join(churn_lines(result)).strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
