"""The imperative shell: owns the event loop, signals, the watchdog and start and stop.

The loop is an `asyncio.TaskGroup` of coroutines, each asleep until its own deadline or
event: the watchdog pings (only pings), the looks at the temp root (at the session poll
rate, every minute or every report interval when shorter, and at once when inotify sees
the temp root change: looking walks /proc, see facts/session.py), the reports (at their slot,
or at once on SIGUSR1), and the stop (SIGTERM/SIGINT), which ends the group. No look runs
during a report cycle; a cycle is cancelled at once by a stop. Pings at least as frequent
as looks carry them: a look then waits for the ping after it is due, so that both happen
in one wake-up. Time comes from an injected clock that also sleeps, so tests drive the
loop on a clock of their own. What is reported and when, and what STATUS= says around it,
is service/reporter.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import random
import signal
import time
from typing import Protocol

import structlog

from usagestatsd.base.sdnotify import Notifier, watchdog_interval
from usagestatsd.config.settings import Settings
from usagestatsd.contract.guard import KnownIdentifiers
from usagestatsd.cycle.pipeline import Disclosure, collect_known_identifiers
from usagestatsd.cycle.run import Clock
from usagestatsd.facts.session import Session
from usagestatsd.service.reporter import Reporter
from usagestatsd.service.schedule import Slot
from usagestatsd.store.service_record import ServiceRecord

log = structlog.get_logger()
SESSION_POLL_S = 60.0


class LoopClock(Clock, Protocol):
    """The daemon's time, and its waits on it (deadlines are monotonic seconds)."""

    async def sleep_until(self, deadline: float) -> None:
        """Return at `deadline`."""

    async def wait_until(self, event: asyncio.Event, deadline: float) -> None:
        """Return when `event` is set or at `deadline` (math.inf: no deadline)."""


class SystemLoopClock:
    """The real clocks; deadlines are the event loop's own timers (on time.monotonic)."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep_until(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        woken = loop.create_future()
        # call_at on the same deadline as another coroutine's: both in one wake-up.
        timer = loop.call_at(deadline, _resolve, woken)
        try:
            await woken
        finally:
            timer.cancel()

    async def wait_until(self, event: asyncio.Event, deadline: float) -> None:
        if deadline == math.inf:
            await event.wait()
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await event.wait()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Stopped(Exception):
    """Ends the task group: a stop was asked for."""


class Daemon:
    """usagestatsd's main loop; `serve()` runs it until SIGTERM/SIGINT."""

    def __init__(
        self,
        settings: Settings,
        notifier: Notifier,
        reporter: Reporter,
        clock: LoopClock | None = None,
    ) -> None:
        self.settings = settings
        self.clock: LoopClock = clock or SystemLoopClock()
        self.notifier = notifier
        self.reporter = reporter
        self.stop_requested = asyncio.Event()
        self.report_now = asyncio.Event()
        self._replan = asyncio.Event()  # the report slot moved, or a report is asked for
        self._cycle_lock = asyncio.Lock()  # held while a cycle runs: no look meanwhile
        self._ping_s = watchdog_interval(settings.watchdog_usec, settings.watchdog_pid) or 0.0
        self._pings_from = 0.0  # the watchdog's grid: a ping at every multiple of _ping_s
        self._planned: tuple[Session | None, Slot | None] = (None, None)  # what _reports awaits

    @property
    def busy(self) -> bool:
        """True while a report cycle runs."""
        return self._cycle_lock.locked()

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
        self.request_report()

    def request_report(self) -> None:
        """Report now (once the running cycle, if any, is over)."""
        self.report_now.set()
        self._replan.set()

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
        """The coroutines, until a stop; a fault in one ends them all and is raised."""
        self._pings_from = self.clock.monotonic()
        try:
            async with asyncio.TaskGroup() as group:
                if self._ping_s:
                    group.create_task(self._watchdog())
                group.create_task(self._looks())
                group.create_task(self._reports())
                group.create_task(self._until_stopped())
        except BaseExceptionGroup as ended:
            _, faults = ended.split(_Stopped)
            if faults is not None:
                # One fault, as the loop raised it before it was a group: a plain traceback.
                raise (faults.exceptions[0] if len(faults.exceptions) == 1 else faults) from None

    async def _until_stopped(self) -> None:
        await self.stop_requested.wait()
        raise _Stopped

    async def _watchdog(self) -> None:
        """WATCHDOG=1 on a fixed grid, through report cycles too."""
        while True:
            self.notifier.watchdog()
            await self.clock.sleep_until(self._next_ping(self.clock.monotonic()))

    def _next_ping(self, after: float) -> float:
        """The first ping time strictly after `after` (a late one is skipped, not repeated)."""
        return self._ping_tick(math.floor((after - self._pings_from) / self._ping_s) + 1)

    def _ping_tick(self, ticks: int) -> float:
        # One expression for both coroutines: a look carried by a ping has the ping's
        # deadline to the bit, so the event loop runs both on one wake-up.
        return self._pings_from + ticks * self._ping_s

    def _look_at(self, due: float) -> float:
        """When a look due at `due` happens: with the first ping from then, if pings carry looks.

        A tenth of a ping period of slack absorbs the lateness of the wake-up the last
        look was made in, so looks keep their period instead of slipping a ping each time.
        """
        if not self._ping_s or self._ping_s > self._look_s():
            return due
        slack = self._ping_s / 10
        return self._ping_tick(max(0, math.ceil((due - slack - self._pings_from) / self._ping_s)))

    async def _looks(self) -> None:
        """Look at the temp root now, then at each look time or inotify nudge."""
        reporter = self.reporter
        look_at = self.clock.monotonic()
        while True:
            if not reporter.nudge.is_set() and look_at > self.clock.monotonic():
                await self.clock.wait_until(reporter.nudge, look_at)
            async with self._cycle_lock:
                reporter.nudge.clear()
                now = self.clock.monotonic()
                reporter.look(now)
                look_at = self._look_at(now + self._look_s())
                # A new session, none any more, or its first report pulled forward.
                if (reporter.session, reporter.slot) != self._planned:
                    self._replan.set()

    async def _reports(self) -> None:
        """One cycle at each slot, or on request once the session is known."""
        reporter = self.reporter
        while True:
            self._planned = reporter.session, reporter.slot
            if not self._replan.is_set():
                slot = reporter.slot
                due = slot.due if slot is not None else math.inf
                await self.clock.wait_until(self._replan, due)
            self._replan.clear()
            session, slot = reporter.session, reporter.slot
            forced = self.report_now.is_set()
            if forced and session is None:
                log.info("report.request_ignored", reason="no Ray session to report on")
                self.report_now.clear()
                forced = False
            due = slot is not None and self.clock.monotonic() >= slot.due
            if session is not None and (forced or due):
                self.report_now.clear()
                async with self._cycle_lock:
                    await self._cycle(session, advance=due)
                if self.report_now.is_set():  # asked for during the cycle: its turn now
                    self._replan.set()

    async def _cycle(self, session: Session, advance: bool) -> None:
        try:
            await self.reporter.report(session, advance=advance)
        except Exception as exc:
            # A bug, not a bad input: say so loudly, keep serving.
            log.error("cycle.crashed", error=f"{type(exc).__name__}: {exc}")


def build_daemon(
    settings: Settings,
    notifier: Notifier,
    disclosure: Disclosure,
    clock: LoopClock | None = None,
    rng: random.Random | None = None,
    record: ServiceRecord | None = None,
) -> Daemon:
    """The daemon and the reporter below it, sharing one clock."""
    loop_clock: LoopClock = clock or SystemLoopClock()
    reporter = Reporter(settings, notifier, disclosure, loop_clock, rng or random.Random(), record)
    return Daemon(settings, notifier, reporter, loop_clock)


def run_daemon(
    settings: Settings,
    known: KnownIdentifiers | None = None,
    withheld: tuple[str, ...] = (),
    record: ServiceRecord | None = None,
) -> int:
    """Build the daemon and run its loop to completion.

    `withheld`: the fields newer than the field set consent was given for (sent as null).
    """
    notifier = Notifier(settings.notify_socket)

    async def main() -> int:
        disclosure = Disclosure.of(settings, known or collect_known_identifiers(), withheld)
        daemon = build_daemon(settings, notifier, disclosure, record=record)
        return await daemon.serve()

    # Start-up objects live as long as the process: keep the collector from rescanning them.
    gc.freeze()
    try:
        return asyncio.run(main())
    finally:
        notifier.close()
