"""The collector's ingest rate as a ratio to a bare aiohttp handler, same machine, same run.

    .venv/bin/python bench/collector_ratio.py [--seconds 10] [--rounds 2] [--backends sqlite]

The bare handler reads the body and answers 200: what aiohttp itself costs for the same
requests from the same load generator (bench/collector_load.py, 100 senders on keep-alive
connections). The collector does everything it does in service: token check, size cap,
validation and privacy guard in its worker processes, the schema check, the seq window,
the rollups and the commit before each 200. The two are run alternately, `--rounds` times
each, so a change in the shared machine's load falls on both; the ratio is of the means.

It also prints the most the measured CPU costs allow, however the work were scheduled: the
collector (its workers included), the load generator and a PostgreSQL server share the
machine's cores, so no rate can pass cores / (the machine's busy time per report), and
`machine_cpu_ms_per_report_for_target` is the busy time per report at which half the bare
handler's rate would just fit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))

from bench.collector import cpu_seconds, create_database, load, maybe_postgres  # noqa: E402
from tests.collector.harness import CollectorProcess, running_collector  # noqa: E402

BARE = """
import asyncio, sys
from aiohttp import web

async def handler(request):
    await request.read()
    return web.json_response({"stored": True, "duplicate": False})

async def main():
    app = web.Application(client_max_size=1 << 16)
    app.router.add_post("/", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


TARGET_RATIO = 0.5


class _Bare:
    """Enough of a CollectorProcess for `load` and `measured`: a URL and a pid."""

    def __init__(self, port: int, pid: int) -> None:
        self.url = f"http://127.0.0.1:{port}/"
        self.pid = pid


def _descendants(pid: int) -> list[int]:
    """`pid` and every process under it (the collector's validation workers)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = int(stat[1])
    found, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def _tree_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


def _machine_busy() -> float:
    """Seconds every core spent not idle since boot (the first line of /proc/stat)."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def measured(target: Any, pid: int, seconds: float) -> dict[str, Any]:
    """One load run and the CPU the server (with its workers) spent per report, in ms:
    a figure the shared machine's load changes far less than the rate. The whole
    machine's busy time per report counts what the server's does not (a PostgreSQL
    server, the load generator, anything else running)."""
    pids = _descendants(pid)
    before, main_before, busy_before = _tree_cpu(pids), cpu_seconds(pid), _machine_busy()
    figures = load(target, seconds)
    spent, main = _tree_cpu(pids) - before, cpu_seconds(pid) - main_before
    busy = _machine_busy() - busy_before
    sent = max(1, figures["sent"])
    figures["server_cpu_ms_per_report"] = round(spent * 1000 / sent, 3)
    figures["main_process_cpu_ms_per_report"] = round(main * 1000 / sent, 3)
    figures["machine_cpu_ms_per_report"] = round(busy * 1000 / sent, 3)
    return figures


@contextlib.contextmanager
def bare_handler() -> Iterator[_Bare]:
    """The bare aiohttp server in its own process (as the collector is)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", BARE], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        yield _Bare(int(proc.stdout.readline()), proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)


def alternate(collector: CollectorProcess, seconds: float, rounds: int) -> dict[str, Any]:
    """Bare, collector, bare, collector, ...: reports/s of each run and the ratio."""
    bare_runs: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    statuses: dict[str, int] = {}
    with bare_handler() as bare:
        load(cast(CollectorProcess, bare), 2)  # warm both: imports, worker processes, caches
        load(collector, 2)
        for _ in range(rounds):
            bare_runs.append(measured(bare, bare.pid, seconds))
            runs.append(measured(collector, collector.proc.pid, seconds))
            for status, count in runs[-1]["statuses"].items():
                statuses[status] = statuses.get(status, 0) + count
    rate, bare_rate = (statistics.mean(r["per_s"] for r in rs) for rs in (runs, bare_runs))
    return {
        **_figures(runs, bare_runs, statuses, rate, bare_rate),
        **cpu_bound(runs, bare_rate),
    }


def _figures(
    runs: list[dict[str, Any]],
    bare_runs: list[dict[str, Any]],
    statuses: dict[str, int],
    rate: float,
    bare_rate: float,
) -> dict[str, Any]:
    return {
        "bare_per_s": [r["per_s"] for r in bare_runs],
        "collector_per_s": [r["per_s"] for r in runs],
        "collector_p99_ms": [r["p99_ms"] for r in runs],
        "collector_statuses": statuses,
        "ratio": round(rate / bare_rate, 3),
        "bare_cpu_ms_per_report": [r["server_cpu_ms_per_report"] for r in bare_runs],
        "collector_cpu_ms_per_report": [r["server_cpu_ms_per_report"] for r in runs],
        # The rest is the validation workers' (parse, schema check, privacy guard).
        "collector_main_process_cpu_ms_per_report": [
            r["main_process_cpu_ms_per_report"] for r in runs
        ],
    }


def cpu_bound(runs: list[dict[str, Any]], bare_rate: float) -> dict[str, Any]:
    """The highest rate the collector's runs' CPU per report allows on this machine's cores,
    as a ratio, and the CPU per report the target ratio would need: whatever the scheduling,
    a rate cannot pass cores / (the whole machine's busy time per report, the load
    generator's and a PostgreSQL server's included)."""
    cores = len(os.sched_getaffinity(0))  # the cores this process may run on
    machine = statistics.mean(r["machine_cpu_ms_per_report"] for r in runs)
    ceiling = cores * 1000 / machine
    return {
        "load_generator_cpu_ms_per_report": [r["client_cpu_ms_per_report"] for r in runs],
        "machine_cpu_ms_per_report": [r["machine_cpu_ms_per_report"] for r in runs],
        "ceiling_per_s": round(ceiling),
        "ratio_ceiling": round(ceiling / bare_rate, 3),
        "machine_cpu_ms_per_report_for_target": round(cores * 1000 / (TARGET_RATIO * bare_rate), 3),
    }


def ratio_figures(state: Path, args: list[str], seconds: float, rounds: int) -> dict[str, Any]:
    """The ratio for one backend, on an empty database."""
    with running_collector(state, args) as c:
        return alternate(c, seconds, rounds)


def main() -> int:
    """Print the figures as JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backends", default="sqlite,postgresql")
    opts = parser.parse_args()
    results: dict[str, Any] = {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="usd-ratio-") as tmp:
        if "sqlite" in opts.backends:
            results["sqlite"] = ratio_figures(Path(tmp) / "s", [], opts.seconds, opts.rounds)
            print(json.dumps(results), flush=True)
        if "postgresql" in opts.backends:
            with maybe_postgres() as pg:
                if pg is not None:
                    dsn = create_database(pg, "ratio")
                    results["postgresql"] = ratio_figures(
                        Path(tmp) / "p", ["--database-url", dsn], opts.seconds, opts.rounds
                    )
    results["load_average_at_end"] = os.getloadavg()
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
