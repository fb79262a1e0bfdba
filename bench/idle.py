"""Figure 4: idle cost between reports, with the watchdog on, beside a watchdog-only loop."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from bench import procstat
from bench.harness import PY, Fixture, NotifySocket, daemon_env, spawn, start_daemon, stop
from bench.results import IdleResult

# The reference: an asyncio loop that only sends WATCHDOG=1 at the daemon's period, having
# imported the same libraries.
IDLE_REFERENCE = r"""
import asyncio, socket, sys
import aiohttp, structlog, tenacity
async def main(period, address):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    while True:
        await asyncio.sleep(period)
        sock.sendto(b"WATCHDOG=1", address)
asyncio.run(main(float(sys.argv[1]), sys.argv[2]))
"""


def measure_idle(
    tmp: Path, window: float, watchdog_s: float, quick: bool, quiet: threading.Event
) -> IdleResult:
    """CPU and voluntary context switches over `window` seconds between two reports.

    The window opens only once `quiet` is set (every other figure is done), half a ping
    period after a ping, so no tick sits on its edges.
    """
    fixture = Fixture(tmp / "ray", nodes=1)
    fixture.wait_session()
    notify, ref_notify = NotifySocket(tmp / "notify"), NotifySocket(tmp / "ref-notify")
    period = watchdog_s / 2
    env = daemon_env(
        tmp, tmp / "ray", fixture.endpoint, 3600, notify.path, int(watchdog_s * 1_000_000)
    )
    t0 = time.monotonic()
    daemon = start_daemon(tmp, env)
    ref = spawn([PY, "-c", IDLE_REFERENCE, str(period), str(ref_notify.path)], cwd=tmp)
    try:
        notify.wait_for("READY=1", 30, after=t0)
        if quick:
            time.sleep(0.3)
            os.kill(daemon.pid, signal.SIGUSR1)  # report now, then idle
        fixture.wait_reports(1, 90)
        quiet.wait()
        notify.wait_for("WATCHDOG=1", period + 10, after=time.monotonic())
        time.sleep(period / 2)
        reports_before = fixture.reports
        a, ra, ta = procstat.sample(daemon.pid), procstat.sample(ref.pid), time.monotonic()
        time.sleep(window)
        b, rb, tb = procstat.sample(daemon.pid), procstat.sample(ref.pid), time.monotonic()
        # The second slot is random in [0, 3600) s after the first: rarely, in the window.
        spoiled = fixture.reports != reports_before
        pings = notify.count("WATCHDOG=1", ta, tb)
        ref_pings = ref_notify.count("WATCHDOG=1", ta, tb)
        others = sum(1 for when, _ in notify.messages if ta <= when < tb) - pings
        rss = procstat.rss_kib(daemon.pid)
        # One more report after the window: what an hourly report costs, caches cold.
        os.kill(daemon.pid, signal.SIGUSR1)
        fixture.wait_reports(reports_before + 1 + int(spoiled), 30)
        time.sleep(0.2)
        c = procstat.sample(daemon.pid)
    finally:
        stop(daemon)
        stop(ref)
        fixture.close()
        notify.close()
        ref_notify.close()
    return IdleResult(
        quick=quick,
        watchdog_s=watchdog_s,
        elapsed_s=tb - ta,
        cpu_ns=b.cpu_ns - a.cpu_ns,
        ticks_ns=b.ticks_ns - a.ticks_ns,
        voluntary=b.voluntary - a.voluntary,
        involuntary=b.involuntary - a.involuntary,
        threads=b.threads,
        pings=pings,
        other_messages=others,
        rss_kib=rss,
        ref_cpu_ns=rb.cpu_ns - ra.cpu_ns,
        ref_voluntary=rb.voluntary - ra.voluntary,
        ref_pings=ref_pings,
        spoiled=spoiled,
        report_after_ns=c.cpu_ns - b.cpu_ns,
    )
