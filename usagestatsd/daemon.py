"""The imperative shell: owns the event loop, signals, the watchdog and the status line.

One loop waits on events (stop, report-now, a change in Ray's temp root seen by inotify,
the running cycle) with a timeout to the next due report or tick; a tick feeds the
watchdog and looks for a new session too (the only way where inotify is unavailable).
Nothing polls faster than that. A cycle (cycle.py) runs as a task so the watchdog keeps
being fed during long retries, and so SIGTERM can cancel it at once. Which session is
followed is follow.py; the policy beside Ray's own reporter is beside_ray.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import signal
import time
from typing import Any

import structlog

from usagestatsd.beside_ray import BesideRay, RaySighting
from usagestatsd.cycle import Clock, CycleOutcome, ReportCycle, SystemClock
from usagestatsd.follow import SessionFollower
from usagestatsd.intake import RayIntake
from usagestatsd.pipeline import collect_known_identifiers
from usagestatsd.privacy import KnownIdentifiers
from usagestatsd.running import Intake, RecordKeeper, RecordStore, ServiceRecord
from usagestatsd.schedule import Schedule
from usagestatsd.session import Session
from usagestatsd.settings import Settings
from usagestatsd.systemd import Notifier, watchdog_interval
from usagestatsd.watch import SessionWatch

log = structlog.get_logger()
SESSION_POLL_S = 60.0


def _clock_text(epoch_s: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch_s))


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
        # What this daemon decided and why, for `usagestatsd status` (running.py).
        self.service = RecordKeeper(RecordStore(settings.state_dir), record) if record else None
        self.notifier = notifier
        self.clock = clock or SystemClock()
        schedule = Schedule(settings.report_interval_s, rng or random.Random())
        self.follower = SessionFollower(settings, schedule)
        self.beside = BesideRay(settings.beside_ray, lambda: self.follower.session)
        self.cycle = ReportCycle(settings, known, self.beside, self.clock, withheld)
        self.stop_requested = asyncio.Event()
        self.report_now = asyncio.Event()
        self.nudge = asyncio.Event()  # look at the temp root now (a session appeared, see watch.py)
        self.cycles_completed = 0
        self.last_status = ""
        self.held: str | None = None  # why the current session gets no report (stand-down...)
        self.intake: RayIntake | None = None

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

    # -- the status line and the service record --------------------------------------

    def _set_status(self, text: str) -> None:
        if text != self.last_status:
            self.last_status = text
            self.notifier.status(text)

    def _record(self, **changes: Any) -> None:
        """Update the service record (running.py) that `status` reads; failures logged once.

        Only decisions go there (consent, intake, session, stand-down), not each report's
        times: state.json has those. The file is rewritten only when a decision changes.
        """
        if self.service is None:
            return
        self.service.update(**changes)
        if self.service.problems:
            log.warning("service_record.write_failed", problem=self.service.problems[-1])
            self.service.problems.clear()

    def _waiting(self) -> str:
        return f"Waiting for a Ray session under {self.settings.temp_root}"

    def _follow(self, now: float) -> None:
        change = self.follower.follow(now)
        if change is None:
            return
        session = change.session
        if session is None or change.first_due is None:
            self._set_status(self._waiting())
            self._record(
                session=None, not_reporting=None, next_report_ms=None, status_line=self._waiting()
            )
            return
        state = self.cycle.state
        remembered = state.session
        same = remembered is not None and remembered.key == session.key
        self.beside.new_session(
            remembered.local_copy_sha256 if same and remembered else None,
            state.pending_digest(session.key),
        )
        first = self.clock.time() + (change.first_due - now)
        self.held = None
        self._set_status(f"Session {session.name} found; first report {_clock_text(first)}")
        self._record(
            session=session.name,
            not_reporting=None,
            next_report_ms=int(first * 1000),  # later ones: state.json's next_report_ms
            status_line=None,
        )

    def _after_cycle(self, session: Session, outcome: CycleOutcome) -> None:
        """Say what the cycle decided: the arrangement beside Ray, or why no report."""
        if outcome.beside is not None:
            self._record(beside=outcome.beside)
        if outcome.hold is not None:
            self.held = outcome.hold.why
            self._set_status(outcome.hold.status)
            self._record(
                session=session.name,
                not_reporting=outcome.hold.why,
                next_report_ms=None,
                status_line=outcome.hold.status,
            )

    def _announce_next(self) -> None:
        slot = self.follower.slot
        if slot is None or self.held is not None:
            return  # a held session keeps its STATUS= line: no report is planned
        next_wall = self.clock.time() + (slot.due - self.clock.monotonic())
        self.cycle.plan_next(int(next_wall * 1000))
        self._record(not_reporting=None, status_line=None)
        last = self.cycle.state.last_report
        if last is None:
            return
        outcome = "ok" if last.success else "failed"
        self._set_status(
            f"Last report {_clock_text(last.time_ms / 1000)} {outcome} (seq {last.seq_number}); "
            f"next {_clock_text(next_wall)}"
        )

    # -- the loop ------------------------------------------------------------------

    def _tick_s(self) -> float:
        ping = watchdog_interval(self.settings.watchdog_usec, self.settings.watchdog_pid)
        poll = min(SESSION_POLL_S, self.settings.report_interval_s)
        return min(ping, poll) if ping else poll

    async def serve(self) -> int:
        """Run until SIGTERM/SIGINT, then return 0, the only status it returns.

        A fault is raised, never turned into a status: the process then exits non-zero
        with the traceback, and systemd restarts it.
        """
        self.install_signal_handlers(asyncio.get_running_loop())
        waiting = self._waiting()
        log.info(
            "daemon.started",
            temp_root=str(self.settings.temp_root),
            interval_s=self.settings.report_interval_s,
            endpoints=",".join(e.display for e in self.settings.endpoints),
        )
        if self.settings.ray_intake is not None:
            host, port = self.settings.ray_intake
            self.intake = RayIntake(host, port, self._on_sighting, self.follower.ray_uids)
            listening = await self.intake.start()
            self._record_intake(self.intake)
            self.beside.listening_at(self.intake.url if listening else None)
            if not listening:
                self.intake = None
                waiting += f" (intake {host}:{port} not listening: Ray cannot be routed here)"
        self.notifier.ready(waiting)
        self.last_status = waiting
        self._record(status_line=waiting)
        watch = self._watch_sessions()
        try:
            await self._loop()
        finally:
            if watch is not None:
                watch.close()
            self.notifier.stopping()
            if self.intake is not None:
                await self.intake.stop()
            stopped = int(self.clock.time() * 1000)
            self._record(stopped_ms=stopped, next_report_ms=None, status_line="Stopped")
            log.info("daemon.stopped")
        return 0

    def _watch_sessions(self) -> SessionWatch | None:
        """Notice a new session when Ray creates it (inotify), not at the next tick."""
        watch = SessionWatch(self.settings.temp_root, self.nudge.set)
        problem = watch.start(asyncio.get_running_loop())
        if problem is None:
            return watch
        log.info(
            "session_watch.unavailable",
            problem=problem,
            fallback=f"the temp root is looked at every {self._tick_s():g} s",
        )
        return None

    def _record_intake(self, intake: RayIntake) -> None:
        if self.service is None or self.service.record.intake is None:
            return
        asked = self.service.record.intake.address
        if intake.problem is None:
            self._record(intake=Intake(asked, True, intake.url))
        else:
            self._record(intake=Intake(asked, False, None, intake.problem))

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

    async def _loop(self) -> None:
        cycle: asyncio.Task[None] | None = None
        next_tick = self.clock.monotonic()
        watchdog = watchdog_interval(self.settings.watchdog_usec, self.settings.watchdog_pid)
        while not self.stop_requested.is_set():
            now = self.clock.monotonic()
            if cycle is None and self.nudge.is_set():
                self.nudge.clear()
                self._follow(now)
            if now >= next_tick:
                if watchdog:
                    self.notifier.watchdog()
                if cycle is None:
                    self._follow(now)
                next_tick = now + self._tick_s()
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
            wake = next_tick
            if cycle is None and self.follower.slot is not None:
                wake = min(wake, self.follower.slot.due)
            await self._wait(max(0.0, wake - self.clock.monotonic()), cycle)
            if cycle is not None and cycle.done():
                self._finish(cycle)
                cycle = None
        if cycle is not None:
            cycle.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await cycle

    async def _wait(self, timeout: float, cycle: asyncio.Task[None] | None) -> None:
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
        self.held = None  # set again by this cycle if it still may not report
        outcome: CycleOutcome | None = None
        try:
            outcome = await self.cycle.run(session)
            self._after_cycle(session, outcome)
        finally:
            if advance:
                self.follower.advance(session, self.clock.monotonic())
            self._announce_next()
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
