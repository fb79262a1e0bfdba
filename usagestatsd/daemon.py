"""The imperative shell: owns the event loop, the report cycle, signals and shutdown.

One loop waits on events (stop, report-now, a change in Ray's temp root seen by inotify,
the running cycle) with a timeout to the next due report or tick; a tick feeds the
watchdog and looks for a new session too (the only way where inotify is unavailable).
Nothing polls faster than that. A cycle runs as a task so the watchdog keeps being fed
during long retries, and so SIGTERM can cancel it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import signal
import time
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import structlog

from usagestatsd.beside_ray import Arrangement, Neighbour, RaySighting, digest
from usagestatsd.history import Record, history_of
from usagestatsd.intake import RayIntake
from usagestatsd.keeper import Keeper
from usagestatsd.pipeline import (
    CANNOT_READ,
    NOT_RUNNING,
    Prepared,
    cluster_refusal,
    collect_known_identifiers,
    prepare_report,
)
from usagestatsd.privacy import KnownIdentifiers
from usagestatsd.report import local_copy
from usagestatsd.running import Beside, Intake, RecordKeeper, RecordStore, ServiceRecord
from usagestatsd.schedule import Schedule, Slot
from usagestatsd.sender import send_report
from usagestatsd.session import (
    Discovery,
    Session,
    find_session,
    read_usage_stats,
    still_there,
    trusted_uids,
    write_usage_stats,
)
from usagestatsd.settings import Settings
from usagestatsd.state import (
    EndpointResult,
    LastReport,
    SessionState,
    State,
    StateError,
    StateStore,
)
from usagestatsd.systemd import Notifier, watchdog_interval
from usagestatsd.watch import SessionWatch

log = structlog.get_logger()
SESSION_POLL_S = 60.0
REWRITE_DELAY_S = 1.0
PENDING_COPY_KEY = "local_copy_pending"


class Clock(Protocol):
    """Time as the daemon sees it; tests pass their own."""

    def monotonic(self) -> float: ...
    def time(self) -> float: ...


class SystemClock:
    """The real clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


def _session_start_ms(prepared: Prepared) -> int | None:
    md = prepared.facts.metadata
    return md.session_start_timestamp_ms if md else None


def _refused(found: Discovery) -> dict[str, str]:
    return {"refused": found.refused} if found.refused else {}


def _clock_text(epoch_s: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch_s))


def _routing_fix(intake: RayIntake | None) -> str:
    """What makes Ray's reporter send to this daemon instead (only when the intake listens)."""
    if intake is None:
        return "turn on and free this daemon's intake (ray_intake), then route Ray to it"
    return f"restart Ray with RAY_USAGE_STATS_REPORT_URL={intake.url}"


@dataclass
class _Tracking:
    """What the loop knows between cycles."""

    session: Session | None = None
    slot: Slot | None = None
    missing_logged: bool = False
    refused_logged: set[str] = field(default_factory=set)
    last_status: str = ""
    held: str | None = None  # why the current session gets no report (stand-down, refusal)


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
        self.withheld = withheld
        self.history = history_of(settings)
        self.notifier = notifier
        self.known = known
        self.clock = clock or SystemClock()
        self.schedule = Schedule(settings.report_interval_s, rng or random.Random())
        self.store = StateStore(settings.state_dir)
        self.keeper = Keeper(self.store, self.history)
        self.state = self._load_state()
        self.track = _Tracking()
        self.stop_requested = asyncio.Event()
        self.report_now = asyncio.Event()
        self.cycles_completed = 0
        self.dirty = False
        self.neighbour = Neighbour(settings.beside_ray)
        self.ray_seen = asyncio.Event()  # set on every report Ray's reporter POSTs to the intake
        self.nudge = asyncio.Event()  # look at the temp root now (a session appeared, see watch.py)
        self.watch: SessionWatch | None = None
        self.intake: RayIntake | None = None
        self._rewrite_pending = False  # one put-back of usage_stats.json at a time

    def _load_state(self) -> State:
        try:
            return self.store.load()
        except StateError as exc:
            aside = self.store.set_aside()
            log.warning(
                "state.unreadable", problem=str(exc), moved_to=str(aside), action="fresh start"
            )
            return State()

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

    def _set_status(self, text: str) -> None:
        if text != self.track.last_status:
            self.track.last_status = text
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

    def _hold(self, session: Session, why: str, status: str) -> None:
        """The current session gets no report now: say why, and plan no report."""
        self.track.held = why
        self._set_status(status)
        self._record(
            session=session.name, not_reporting=why, next_report_ms=None, status_line=status
        )

    def _tick_s(self) -> float:
        ping = watchdog_interval(self.settings.watchdog_usec, self.settings.watchdog_pid)
        poll = min(SESSION_POLL_S, self.settings.report_interval_s)
        return min(ping, poll) if ping else poll

    async def serve(self) -> int:
        """Run until SIGTERM/SIGINT, then return 0, the only status it returns.

        A fault is raised, never turned into a status: the process then exits non-zero
        with the traceback, and systemd restarts it.
        """
        loop = asyncio.get_running_loop()
        self.install_signal_handlers(loop)
        waiting = f"Waiting for a Ray session under {self.settings.temp_root}"
        log.info(
            "daemon.started",
            temp_root=str(self.settings.temp_root),
            interval_s=self.settings.report_interval_s,
            endpoints=",".join(e.display for e in self.settings.endpoints),
        )
        if self.settings.ray_intake is not None:
            host, port = self.settings.ray_intake
            self.intake = RayIntake(host, port, self._on_sighting, self._ray_uids)
            listening = await self.intake.start()
            self._record_intake(self.intake)
            if not listening:
                self.intake = None
                waiting += f" (intake {host}:{port} not listening: Ray cannot be routed here)"
        self.notifier.ready(waiting)
        self.track.last_status = waiting
        self._record(status_line=waiting)
        self._watch_sessions(loop)
        try:
            await self._loop()
        finally:
            if self.watch is not None:
                self.watch.close()
            self.notifier.stopping()
            if self.intake is not None:
                await self.intake.stop()
            stopped = int(self.clock.time() * 1000)
            self._record(stopped_ms=stopped, next_report_ms=None, status_line="Stopped")
            log.info("daemon.stopped")
        return 0

    def _watch_sessions(self, loop: asyncio.AbstractEventLoop) -> None:
        """Notice a new session when Ray creates it (inotify), not at the next tick."""
        self.watch = SessionWatch(self.settings.temp_root, self.nudge.set)
        problem = self.watch.start(loop)
        if problem is not None:
            self.watch = None
            log.info(
                "session_watch.unavailable",
                problem=problem,
                fallback=f"the temp root is looked at every {self._tick_s():g} s",
            )

    def _pull_first_report(self) -> None:
        """Ray's reporter reached the intake before our first report: send ours right away."""
        slot, session = self.track.slot, self.track.session
        if session is None or slot is None or slot.index != 0:
            return
        remembered = self.state.session
        if remembered and remembered.key == session.key and remembered.counters.seq_number:
            return  # this session was reported already (e.g. on SIGUSR1): nothing to pull
        now = self.clock.monotonic()
        if slot.due > now:
            self.track.slot = Slot(now, 0)
            self.nudge.set()

    def _record_intake(self, intake: RayIntake) -> None:
        if self.service is None or self.service.record.intake is None:
            return
        asked = self.service.record.intake.address
        if intake.problem is None:
            self._record(intake=Intake(asked, True, intake.url))
        else:
            self._record(intake=Intake(asked, False, None, intake.problem))

    async def _loop(self) -> None:
        cycle: asyncio.Task[None] | None = None
        next_tick = self.clock.monotonic()
        watchdog = watchdog_interval(self.settings.watchdog_usec, self.settings.watchdog_pid)
        while not self.stop_requested.is_set():
            now = self.clock.monotonic()
            if cycle is None and self.nudge.is_set():
                self.nudge.clear()
                self._follow_session(now)
            if now >= next_tick:
                if watchdog:
                    self.notifier.watchdog()
                if cycle is None:
                    self._follow_session(now)
                next_tick = now + self._tick_s()
            forced = self.report_now.is_set()
            if forced and self.track.session is None:
                log.info("report.request_ignored", reason="no Ray session to report on")
                self.report_now.clear()
                forced = False
            due = self.track.slot is not None and now >= self.track.slot.due
            if cycle is None and self.track.session and (forced or due):
                self.report_now.clear()
                cycle = asyncio.create_task(self._cycle(self.track.session, advance=due))
            wake = next_tick
            if cycle is None and self.track.slot is not None:
                wake = min(wake, self.track.slot.due)
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

    def _follow_session(self, now: float) -> None:
        found: Discovery = find_session(
            self.settings.temp_root, trusted_uids(self.settings.ray_user)
        )
        current = self.track.session
        if found.session is None:
            if current is not None or not self.track.missing_logged:
                log.info(
                    "session.missing", temp_root=str(self.settings.temp_root), **_refused(found)
                )
                self.track.missing_logged = True
            self.track.session, self.track.slot = None, None
            waiting = f"Waiting for a Ray session under {self.settings.temp_root}"
            self._set_status(waiting)
            self._record(session=None, not_reporting=None, next_report_ms=None, status_line=waiting)
            return
        if current is not None and current.key == found.session.key:
            return
        self.track.session = found.session
        self.track.slot = self.schedule.first(now)
        remembered = self.state.session
        same = remembered is not None and remembered.key == found.session.key
        pending = self.state.extra.get(PENDING_COPY_KEY)
        pending = pending if isinstance(pending, dict) else {}
        self.neighbour.new_session(
            remembered.local_copy_sha256 if same and remembered else None,
            pending.get("sha256") if pending.get("session") == found.session.key else None,
        )
        self.track.missing_logged = False
        log.info("session.found", session_dir=str(found.session.path), **_refused(found))
        first = self.clock.time() + (self.track.slot.due - now)
        self.track.held = None
        self._set_status(f"Session {found.session.name} found; first report {_clock_text(first)}")
        self._record(
            session=found.session.name,
            not_reporting=None,
            next_report_ms=int(first * 1000),  # later ones: state.json's next_report_ms
            status_line=None,
        )

    async def _cycle(self, session: Session, advance: bool) -> None:
        self.dirty = False
        self.track.held = None  # set again by this cycle if it still may not report
        try:
            await self.report_once(session)
        finally:
            if advance and self.track.slot is not None and self.track.session == session:
                self.track.slot = self.schedule.after(self.track.slot, self.clock.monotonic())
            self._announce_next()
            if self.dirty:
                self._save_state()

    def _announce_next(self) -> None:
        slot = self.track.slot
        if slot is None or self.track.held is not None:
            return  # a held session keeps its STATUS= line: no report is planned
        next_wall = self.clock.time() + (slot.due - self.clock.monotonic())
        self.state = replace(self.state, next_report_ms=int(next_wall * 1000))
        self._record(not_reporting=None, status_line=None)
        last = self.state.last_report
        if last is None:
            return
        outcome = "ok" if last.success else "failed"
        self._set_status(
            f"Last report {_clock_text(last.time_ms / 1000)} {outcome} (seq {last.seq_number}); "
            f"next {_clock_text(next_wall)}"
        )

    # -- one report ----------------------------------------------------------------

    async def report_once(self, session: Session) -> None:
        """Gather, check, send to every endpoint, write usage_stats.json, save counters."""
        if not still_there(session):
            log.warning("session.vanished", session_dir=str(session.path))
            return
        now_ms = int(self.clock.time() * 1000)
        prepared = await prepare_report(
            self.settings, session, self.state, self.known, now_ms, self.withheld
        )
        if prepared.facts.origins != self.state.origins:
            self.state = replace(self.state, origins=prepared.facts.origins)
            self.dirty = True
        refusal = cluster_refusal(prepared.facts)
        # A stopped head is one info line, an unreadable one one warning: not one per socket.
        if refusal != NOT_RUNNING and not (refusal or "").startswith(CANNOT_READ):
            for problem in prepared.facts.problems:
                log.warning("cluster.source_failed", source=problem.source, problem=problem.problem)
        if refusal:
            self._refuse(session, refusal)
            return
        prepared = await self._after_grace(session, prepared)
        if self._stand_down(session, prepared):
            return
        for redaction in prepared.redactions:
            log.warning("privacy.redacted", field=redaction.field, reason=redaction.reason)
        # The id this report carries is the session's from now on (pipeline.choose_session_id):
        # the reservation below already saves it, so a kill after the send cannot change it.
        remembered = replace(
            prepared.remembered, session_id=prepared.session_id, id_source=prepared.id_source
        )
        if not self._reserve(remembered):
            return
        context = {"session_id": prepared.session_id, "seq": remembered.counters.seq_number}
        settings = self.settings
        results = await send_report(
            prepared.body,
            settings.endpoints,
            settings.retry,
            settings.retry.budget_for(settings.report_interval_s),
            settings.http_timeout_s,
            context,
            max_response=settings.http_max_response_bytes,
        )
        success = all(r.ok for r in results)
        error = "; ".join(f"{r.endpoint}: {r.error}" for r in results if not r.ok) or None
        copy = local_copy(prepared.body, success, error)
        last = LastReport(
            int(self.clock.time() * 1000),
            prepared.session_id,
            remembered.counters.seq_number,
            success,
            error,
            tuple(results),
        )
        # Remember the new copy's digest before writing it: killed between the write and the
        # state save, the restarted daemon must know the file as its own, not as Ray's.
        pending = {"session": session.key, "sha256": digest(copy)}
        outcome = replace(remembered, counters=remembered.counters.after(success))
        self.state = replace(
            self.state,
            session=outcome,
            last_report=last,
            extra={**self.state.extra, PENDING_COPY_KEY: pending},
        )
        self._save_state()  # state first: the history is the one that gives way
        self._record_history(prepared, results)
        copy_digest = self._write_local_copy(session, copy)
        if copy_digest:
            self.state = replace(
                self.state, session=replace(outcome, local_copy_sha256=copy_digest)
            )
        self.dirty = True

    def _reserve(self, remembered: SessionState) -> bool:
        """Save this attempt's seq number as used (counted failed until known) before sending.

        A restart then never sends this seq number, or a lower one, again. When state.json
        cannot be saved even after the history gave way, nothing is sent: the next cycle
        tries again with the same number.
        """
        reserved = replace(remembered, counters=remembered.counters.after(False))
        previous = self.state
        self.state = replace(self.state, session=reserved)
        if self._save_state():
            return True
        self.state = previous
        log.warning(
            "report.not_sent",
            seq=remembered.counters.seq_number,
            reason="state.json could not be saved first, so a restart could reuse the seq number",
        )
        return False

    def _record_history(self, prepared: Prepared, results: list[EndpointResult]) -> None:
        now_ms = int(self.clock.time() * 1000)
        sha = digest(prepared.body)
        body = prepared.body.decode("ascii")  # serialise() emits ASCII-only JSON
        records = [
            Record(
                "report",
                now_ms,
                prepared.session_id,
                r.endpoint,
                "sent" if r.ok else "failed",
                r.status,
                r.error,
                sha,
                body,
            )
            for r in results
        ]
        self.keeper.record(records, now_ms)

    # -- beside Ray's own reporter (docs/beside-ray.md) -----------------------------

    async def _after_grace(self, session: Session, prepared: Prepared) -> Prepared:
        """Early in a session, wait until Ray's reporter has had its chance to show itself."""
        start_ms = _session_start_ms(prepared)
        now_ms = int(self.clock.time() * 1000)
        wait = self.neighbour.grace_left_s(start_ms, now_ms)
        if wait <= 0 or self.neighbour.arrangement(start_ms, None) is Arrangement.ROUTED:
            return prepared
        log.info(
            "beside_ray.waiting",
            seconds=round(wait, 1),
            reason="Ray's own reporter sends its first report 60 s after the head starts",
        )
        # Ray's reporter may show up at the intake during the wait: then stop waiting.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while self.neighbour.arrangement(start_ms, None) is not Arrangement.ROUTED:
            left = deadline - loop.time()
            if left <= 0:
                break
            self.ray_seen.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ray_seen.wait(), left)
        return await prepare_report(
            self.settings,
            session,
            self.state,
            self.known,
            int(self.clock.time() * 1000),
            self.withheld,
        )

    def _stand_down(self, session: Session, prepared: Prepared) -> bool:
        start_ms = _session_start_ms(prepared)
        local = read_usage_stats(session)
        arrangement = self.neighbour.arrangement(start_ms, local)
        standing_down = self.neighbour.should_stand_down(arrangement)
        self._note_arrangement(session, arrangement, standing_down)
        if not standing_down:
            return False
        fix = _routing_fix(self.intake)
        if session.key not in self.neighbour.warned:
            self.neighbour.warned.add(session.key)
            log.warning(
                "beside_ray.standing_down",
                session_dir=str(session.path),
                reason="Ray's own reporter is sending this session's reports itself",
                fix=fix + ' so that only usagestatsd sends, or set beside_ray = "report"',
            )
        self._hold(
            session,
            "standing down: Ray's own reporter sends this session's reports itself",
            f"Standing down: Ray's own reporter sends this session's reports; to report, {fix}",
        )
        return True

    def _note_arrangement(
        self, session: Session, arrangement: Arrangement, standing_down: bool
    ) -> None:
        last = self.neighbour.sightings[-1].received_ms if self.neighbour.sightings else None
        beside = Beside(self.neighbour.mode, session.name, arrangement.value, last, standing_down)
        self._record(beside=beside)

    def _ray_uids(self) -> set[int]:
        """Who may report to the intake as Ray's reporter: root, ray_user, the session's owner."""
        ray_user = self.settings.ray_user
        trusted = trusted_uids(ray_user)
        session = self.track.session or find_session(self.settings.temp_root, trusted).session
        uids = {0} | ({ray_user} if ray_user is not None else set())
        return uids | ({session.owner_uid} if session is not None else set())

    def _on_sighting(self, sighting: RaySighting) -> None:
        self.neighbour.saw(sighting)
        self.ray_seen.set()
        self._pull_first_report()
        session = self.track.session
        if session is not None and self.neighbour.last_copy is not None:
            if self._rewrite_pending:
                return  # coalesced: the put-back already due writes the same bytes
            # Ray writes its own usage_stats.json right after its POST returns: put back
            # the copy of what usagestatsd really sent, a moment later.
            self._rewrite_pending = True
            asyncio.get_running_loop().call_later(REWRITE_DELAY_S, self._rewrite, session)

    def _rewrite(self, session: Session) -> None:
        self._rewrite_pending = False
        data = self.neighbour.last_copy  # the newest copy, if a report was sent meanwhile
        if data is None or self.track.session != session or not still_there(session):
            return
        if read_usage_stats(session) == data:
            return  # nobody replaced our copy: rewriting it would only wear the disk
        with contextlib.suppress(OSError):
            write_usage_stats(session, data)

    def _refuse(self, session: Session, refusal: str) -> None:
        self._hold(session, refusal, f"Not reporting session {session.name}: {refusal}")
        if session.key in self.track.refused_logged:
            return
        self.track.refused_logged.add(session.key)
        # Only an unreadable metadata answer is trouble; the other reasons are normal states.
        level = log.warning if refusal.startswith(("cluster metadata", CANNOT_READ)) else log.info
        level("session.not_reported", session_dir=str(session.path), reason=refusal)

    def _write_local_copy(self, session: Session, data: bytes) -> str | None:
        try:
            write_usage_stats(session, data)
        except OSError as exc:
            log.warning(
                "usage_stats.write_failed",
                path=str(session.usage_stats_path),
                problem=exc.strerror or str(exc),
            )
            return None
        return self.neighbour.wrote(data)

    def _save_state(self) -> bool:
        return self.keeper.save(self.state, int(self.clock.time() * 1000))


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
