"""Figure 3: CPU per report cycle and peak memory, for simulated clusters of 1 to 10,000 nodes."""

from __future__ import annotations

import time
from pathlib import Path

from bench import procstat
from bench.harness import Fixture, NotifySocket, daemon_env, start_daemon, stop
from bench.results import CycleResult

WARMUP = 3


def one_size(tmp: Path, nodes: int, cycles: int) -> CycleResult:
    """A fresh daemon against a fresh simulated cluster of `nodes` nodes."""
    fixture = Fixture(tmp / "ray", nodes=nodes, defer=True)
    notify = NotifySocket(tmp / "notify")
    env = daemon_env(tmp, tmp / "ray", fixture.endpoint, 0.05, notify.path)
    t0 = time.monotonic()
    daemon = start_daemon(tmp, env)
    try:
        notify.wait_for("READY=1", 30, after=t0)
        time.sleep(0.5)
        base = procstat.sample(daemon.pid)
        base_rss = procstat.rss_kib(daemon.pid)
        procstat.reset_peak(daemon.pid)
        fixture.start_session()
        fixture.wait_reports(1, 60)
        first = procstat.sample(daemon.pid)
        k1 = fixture.wait_reports(WARMUP, 60)
        a, ta = procstat.sample(daemon.pid), time.monotonic()
        k2 = fixture.wait_reports(k1 + cycles, 60 + cycles * 2)
        b, tb = procstat.sample(daemon.pid), time.monotonic()
        n = k2 - k1
        served = fixture.served()
        asked = max(requests for requests, _ in served.values())
        return CycleResult(
            nodes=nodes,
            fetched_bytes=sum(size for _, size in served.values()) // asked,
            paths=sorted(served),
            report_bytes=fixture.report_bytes,
            first_ns=first.cpu_ns - base.cpu_ns,
            per_cycle_ns=(b.cpu_ns - a.cpu_ns) / n,
            per_cycle_ticks_ns=(b.ticks_ns - a.ticks_ns) / n,
            faults_per_cycle=(b.minor_faults - a.minor_faults) / n,
            cycles=n,
            wall_s=(tb - ta) / n,
            base_rss=base_rss,
            extra_peak_kib=procstat.hwm_kib(daemon.pid) - base_rss,
            rss_after=procstat.rss_kib(daemon.pid),
        )
    finally:
        stop(daemon)
        fixture.close()
        notify.close()


def measure_cycles(tmp: Path, plan: list[tuple[int, int]]) -> list[CycleResult]:
    """One result per (nodes, cycles) of the plan, each in its own directory."""
    out = []
    for nodes, cycles in plan:
        sub = tmp / str(nodes)
        sub.mkdir()
        out.append(one_size(sub, nodes, cycles))
    return out
