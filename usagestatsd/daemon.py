"""The imperative shell: owns the event loop, signals, the watchdog and start and stop.

One loop waits on events (stop, report-now, a change in Ray's temp root seen by inotify,
the running cycle) with a timeout to the next due report, watchdog ping or look at the
temp root. A ping only pings: looking for the session walks /proc (session.py), so it
runs at the session poll rate (every minute, or every report interval when shorter) and
at once when inotify sees the temp root change. Nothing polls faster. A report cycle
(cycle.py) runs as a task so the watchdog keeps being fed during long retries, and so
SIGTERM can cancel it at once. The session followed is follow.py's, the policy beside
Ray's own reporter beside_ray.py's, and what STATUS= and service.json say is announce.py's.
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

from usagestatsd.announce import Announcer
from usagestatsd.beside_ray import BesideRay, RaySighting
from usagestatsd.cycle import Clock, CycleOutcome, ReportCycle, SystemClock
from usagestatsd.follow import SessionFollower
from usagestatsd.intake import RayIntake
from usagestatsd.pipeline import collect_known_identifiers
from usagestatsd.privacy import KnownIdentifiers
from usagestatsd.running import ServiceRecord
from usagestatsd.schedule import Schedule
from usagestatsd.session import Session
from usagestatsd.settings import Settings
from usagestatsd.systemd import Notifier, watchdog_interval
from usagestatsd.watch import SessionWatch

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
        self.announce = Announcer(notifier, settings.temp_root, settings.state_dir, record)
        schedule = Schedule(settings.report_interval_s, rng or random.Random())
        self.follower = SessionFollower(settings, schedule)
        self.beside = BesideRay(settings.beside_ray, lambda: self.follower.session)
        self.cycle = ReportCycle(settings, known, self.beside, self.clock, withheld)
        self.stop_requested = asyncio.Event()
        self.report_now = asyncio.Event()
        self.nudge = asyncio.Event()  # look at the temp root now (a session appeared, see watch.py)
        self.cycles_completed = 0

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
        intake = await self._start_intake()
        watch = self._watch_sessions()
        try:
            await self._loop()
        finally:
            if watch is not None:
                watch.close()
            self.announce.stopping()
            if intake is not None:
                await intake.stop()
            self.announce.stopped(int(self.clock.time() * 1000))
            log.info("daemon.stopped")
        return 0

    async def _start_intake(self) -> RayIntake | None:
        """Listen for Ray's reporter (docs/beside-ray.md), then say READY=1."""
        waiting, intake = self.announce.waiting_text(), None
        if self.settings.ray_intake is not None:
            host, port = self.settings.ray_intake
            intake = RayIntake(host, port, self._on_sighting, self.follower.ray_uids)
            listening = await intake.start()
            self.announce.intake(intake)
            self.beside.listening_at(intake.url if listening else None)
            if not listening:
                intake = None
                waiting += f" (intake {host}:{port} not listening: Ray cannot be routed here)"
        self.announce.ready(waiting)
        return intake

    def _watch_sessions(self) -> SessionWatch | None:
        """Notice a new session when Ray creates it (inotify), not at the next tick."""
        watch = SessionWatch(self.settings.temp_root, self.nudge.set)
        problem = watch.start(asyncio.get_running_loop())
        if problem is None:
            return watch
        fallback = f"the temp root is looked at every {self._look_s():g} s"
        log.info("session_watch.unavailable", problem=problem, fallback=fallback)
        return None

    def _on_sighting(self, sighting: RaySighting) -> None:
        """Ray's reporter reached the intake; before our first report: send ours right away."""
        self.beside.saw(sighting)
        session, remembered = self.follower.session, self.cycle.state.session
        if session is None or (
            remembered and remembered.key == session.key and remembered.counters.seq_number
        ):
            return  # this session was reported already (e.g. on SIGUSR1): nothing to pull
        if self.follower.pull_first(self.clock.monotonic()):
            self.nudge.set()

    def _follow(self, now: float) -> None:
        change = self.follower.follow(now)
        if change is None:
            return
        if change.session is None or change.first_due is None:
            self.announce.no_session()
            return
        state, key = self.cycle.state, change.session.key
        remembered = state.session if state.session and state.session.key == key else None
        self.beside.new_session(
            remembered.local_copy_sha256 if remembered else None,
            state.pending_digest(key),
            remembered.ray_routed if remembered else False,
        )
        first = self.clock.time() + (change.first_due - now)
        self.announce.session_found(change.session.name, first)

    async def _loop(self) -> None:
        cycle: asyncio.Task[None] | None = None
        next_ping = next_look = self.clock.monotonic()
        ping_s = watchdog_interval(self.settings.watchdog_usec, self.settings.watchdog_pid)
        while not self.stop_requested.is_set():
            now = self.clock.monotonic()
            if ping_s and now >= next_ping:
                self.notifier.watchdog()
                next_ping = now + ping_s
            if cycle is None and (self.nudge.is_set() or now >= next_look):
                self.nudge.clear()
                self._follow(now)
                next_look = now + self._look_s()
            session, slot = self.follower.session, self.follower.slot
            forced = self.report_now.is_set()
            if forced and session is None:
                log.info("report.request_ignored", reason="no Ray session to report on")
                self.report_now.clear()
                forced = False
            due = slot is not None and now >= slot.due
            if cycle is None and session and (forced or due):
                self.report_now.clear()
                cycle = asyncio.create_task(self._report(session, advance=due))
            # While a cycle runs, only a ping (or the cycle's end, or a stop) wakes the loop.
            # Pings at least as frequent as looks carry the looks: no wake-up of their own.
            wake = next_ping if ping_s else math.inf
            if cycle is None:
                slot = self.follower.slot
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
            waiters.add(asyncio.ensure_future(self.nudge.wait()))
        pending: set[asyncio.Future[Any]] = set(waiters)
        if cycle is not None:
            pending.add(cycle)
        await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()

    def _finish(self, cycle: asyncio.Task[None]) -> None:
        self.cycles_completed += 1
        if not cycle.cancelled() and cycle.exception() is not None:
            exc = cycle.exception()
            # A bug, not a bad input: say so loudly, keep serving.
            log.error("cycle.crashed", error=f"{type(exc).__name__}: {exc}")

    async def _report(self, session: Session, advance: bool) -> None:
        """One cycle, then the next slot, the status line, and the state saved with the plan."""
        self.announce.cycle_started()
        outcome: CycleOutcome | None = None
        try:
            outcome = await self.cycle.run(session)
            if outcome.beside is not None:
                self.announce.beside(outcome.beside)
            if outcome.hold is not None:
                self.announce.hold(session.name, outcome.hold.why, outcome.hold.status)
        finally:
            if advance:
                self.follower.advance(session, self.clock.monotonic())
            slot = self.follower.slot
            if slot is not None and not self.announce.holding:  # held: no report planned
                next_wall = self.clock.time() + (slot.due - self.clock.monotonic())
                self.cycle.plan_next(int(next_wall * 1000))
                self.announce.planned(next_wall, self.cycle.state.last_report)
            # Interrupted (SIGTERM, a bug): what it changed so far is saved too.
            if outcome is None or outcome.state_changed:
                self.cycle.save()


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
