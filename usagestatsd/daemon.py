"""The imperative shell: owns the event loop, signals, the watchdog and start and stop.

One loop waits on events (stop, report-now, a change in Ray's temp root seen by inotify,
the running cycle) with a timeout to the next due report, watchdog ping or look at the
temp root. A ping only pings: looking for the session walks /proc (session.py), so it
runs at the session poll rate (every minute, or every report interval when shorter) and
at once when inotify sees the temp root change. Nothing polls faster. A report cycle runs
as a task so the watchdog keeps being fed during long retries, and so SIGTERM can cancel
it at once. What is reported and when, and what STATUS= says around it, is reporter.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import random
import signal
from typing import Any

import structlog

from usagestatsd.cycle import Clock, SystemClock
from usagestatsd.pipeline import collect_known_identifiers
from usagestatsd.privacy import KnownIdentifiers
from usagestatsd.reporter import Reporter
from usagestatsd.running import ServiceRecord
from usagestatsd.settings import Settings
from usagestatsd.systemd import Notifier, watchdog_interval

log = structlog.get_logger()
SESSION_POLL_S = 60.0


class Daemon:
    """usagestatsd's main loop; `serve()` runs it until SIGTERM/SIGINT."""

    def __init__(
        self,
        settings: Settings,
        notifier: Notifier,
        known: KnownIdentifiers,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        withheld: tuple[str, ...] = (),
        record: ServiceRecord | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.notifier = notifier
        self.reporter = Reporter(
            settings, notifier, known, self.clock, rng or random.Random(), withheld, record
        )
        self.stop_requested = asyncio.Event()
        self.report_now = asyncio.Event()

    # -- signals -------------------------------------------------------------------

    def install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        """TERM/INT stop, HUP explains that nothing is reloaded, USR1 reports now."""
        loop.add_signal_handler(signal.SIGTERM, self._on_stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self._on_stop, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        loop.add_signal_handler(signal.SIGUSR1, self._on_usr1)

    def _on_stop(self, name: str) -> None:
        self.stop_requested.set()  # first: nothing (not even a failing log write) may block it
        log.info("daemon.stopping", signal=name)

    def _on_hup(self) -> None:
        log.info(
            "daemon.reload_ignored",
            detail="settings and consent are read only at start; "
            "run 'systemctl restart usagestatsd' to apply changes",
        )

    def _on_usr1(self) -> None:
        log.info("report.requested", signal="SIGUSR1")
        self.report_now.set()

    # -- the loop ------------------------------------------------------------------

    def _look_s(self) -> float:
        """Seconds between looks at the temp root for the session (besides inotify's)."""
        return min(SESSION_POLL_S, self.settings.report_interval_s)

    async def serve(self) -> int:
        """Run until SIGTERM/SIGINT, then return 0, the only status it returns.

        A fault is raised, never turned into a status: the process then exits non-zero
        with the traceback, and systemd restarts it.
        """
        self.install_signal_handlers(asyncio.get_running_loop())
        log.info(
            "daemon.started",
            temp_root=str(self.settings.temp_root),
            interval_s=self.settings.report_interval_s,
            endpoints=",".join(e.display for e in self.settings.endpoints),
        )
        await self.reporter.start(self._look_s())
        try:
            await self._loop()
        finally:
            await self.reporter.stop()
            log.info("daemon.stopped")
        return 0

    async def _loop(self) -> None:
        reporter = self.reporter
        cycle: asyncio.Task[None] | None = None
        next_ping = next_look = self.clock.monotonic()
        ping_s = watchdog_interval(self.settings.watchdog_usec, self.settings.watchdog_pid)
        while not self.stop_requested.is_set():
            now = self.clock.monotonic()
            if ping_s and now >= next_ping:
                self.notifier.watchdog()
                next_ping = now + ping_s
            if cycle is None and (reporter.nudge.is_set() or now >= next_look):
                reporter.nudge.clear()
                reporter.look(now)
                next_look = now + self._look_s()
            session, slot = reporter.session, reporter.slot
            forced = self.report_now.is_set()
            if forced and session is None:
                log.info("report.request_ignored", reason="no Ray session to report on")
                self.report_now.clear()
                forced = False
            due = slot is not None and now >= slot.due
            if cycle is None and session and (forced or due):
                self.report_now.clear()
                cycle = asyncio.create_task(reporter.report(session, advance=due))
            # While a cycle runs, only a ping (or the cycle's end, or a stop) wakes the loop.
            # Pings at least as frequent as looks carry the looks: no wake-up of their own.
            wake = next_ping if ping_s else math.inf
            if cycle is None:
                slot = reporter.slot
                look = math.inf if ping_s and ping_s <= self._look_s() else next_look
                wake = min(wake, look, slot.due if slot is not None else math.inf)
            timeout = None if wake == math.inf else max(0.0, wake - self.clock.monotonic())
            await self._wait(timeout, cycle)
            if cycle is not None and cycle.done():
                self._finish(cycle)
                cycle = None
        if cycle is not None:
            cycle.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await cycle

    async def _wait(self, timeout: float | None, cycle: asyncio.Task[None] | None) -> None:
        waiters = {asyncio.ensure_future(self.stop_requested.wait())}
        if cycle is None:
            # While a cycle runs, a report request waits for it (no busy loop on a set event).
            waiters.add(asyncio.ensure_future(self.report_now.wait()))
            waiters.add(asyncio.ensure_future(self.reporter.nudge.wait()))
        pending: set[asyncio.Future[Any]] = set(waiters)
        if cycle is not None:
            pending.add(cycle)
        await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()

    def _finish(self, cycle: asyncio.Task[None]) -> None:
        if not cycle.cancelled() and cycle.exception() is not None:
            exc = cycle.exception()
            # A bug, not a bad input: say so loudly, keep serving.
            log.error("cycle.crashed", error=f"{type(exc).__name__}: {exc}")


def run_daemon(
    settings: Settings,
    known: KnownIdentifiers | None = None,
    withheld: tuple[str, ...] = (),
    record: ServiceRecord | None = None,
) -> int:
    """Build the daemon and run its loop to completion."""
    notifier = Notifier(settings.notify_socket)

    async def main() -> int:
        known_ids = known or collect_known_identifiers()
        daemon = Daemon(settings, notifier, known_ids, withheld=withheld, record=record)
        return await daemon.serve()

    # Start-up objects live as long as the process: keep the collector from rescanning them.
    gc.freeze()
    try:
        return asyncio.run(main())
    finally:
        notifier.close()
