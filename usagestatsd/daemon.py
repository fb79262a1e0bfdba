"""The imperative shell: owns the event loop, the report cycle, signals and shutdown.

One loop waits on events (stop, report-now, the running cycle) with a timeout to the next
due report or tick; a tick feeds the watchdog and looks for a new session. Nothing polls
faster than that. A cycle runs as a task so the watchdog keeps being fed during long
retries, and so SIGTERM can cancel it at once.
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

from usagestatsd.beside_ray import Arrangement, Neighbour, RayIntake, RaySighting, digest
from usagestatsd.history import Record, history_of
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


@dataclass
class _Tracking:
    """What the loop knows between cycles."""

    session: Session | None = None
    slot: Slot | None = None
    missing_logged: bool = False
    refused_logged: set[str] = field(default_factory=set)
    last_status: str = ""


class Daemon:
    """usagestatsd's main loop; `serve()` returns the process exit status."""

    def __init__(
        self,
        settings: Settings,
        notifier: Notifier,
        known: KnownIdentifiers,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        withheld: tuple[str, ...] = (),
    ) -> None:
        self.settings = settings
        self.withheld = withheld
        self.history = history_of(settings)
        self.notifier = notifier
        self.known = known
        self.clock = clock or SystemClock()
        self.schedule = Schedule(settings.report_interval_s, rng or random.Random())
        self.store = StateStore(settings.state_dir)
        self.state = self._load_state()
        self.track = _Tracking()
        self.stop_requested = asyncio.Event()
        self.report_now = asyncio.Event()
        self.cycles_completed = 0
        self.dirty = False
        self.neighbour = Neighbour(settings.beside_ray)
        self.ray_seen = asyncio.Event()  # set on every report Ray's reporter POSTs to the intake
        self.intake: RayIntake | None = None

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

    def _tick_s(self) -> float:
        ping = watchdog_interval(self.settings.watchdog_usec, self.settings.watchdog_pid)
        poll = min(SESSION_POLL_S, self.settings.report_interval_s)
        return min(ping, poll) if ping else poll

    async def serve(self) -> int:
        """Run until SIGTERM/SIGINT; returns 0 on a clean stop."""
        loop = asyncio.get_running_loop()
        self.install_signal_handlers(loop)
        waiting = f"Waiting for a Ray session under {self.settings.temp_root}"
        self.notifier.ready(waiting)
        self.track.last_status = waiting
        log.info(
            "daemon.started",
            temp_root=str(self.settings.temp_root),
            interval_s=self.settings.report_interval_s,
            endpoints=",".join(e.display for e in self.settings.endpoints),
        )
        if self.settings.ray_intake is not None:
            host, port = self.settings.ray_intake
            self.intake = RayIntake(host, port, self._on_sighting)
            if not await self.intake.start():
                self.intake = None
        try:
            await self._loop()
        finally:
            self.notifier.stopping()
            if self.intake is not None:
                await self.intake.stop()
            log.info("daemon.stopped")
        return 0

    async def _loop(self) -> None:
        cycle: asyncio.Task[None] | None = None
        next_tick = self.clock.monotonic()
        watchdog = watchdog_interval(self.settings.watchdog_usec, self.settings.watchdog_pid)
        while not self.stop_requested.is_set():
            now = self.clock.monotonic()
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
            self._set_status(f"Waiting for a Ray session under {self.settings.temp_root}")
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
        self._set_status(f"Session {found.session.name} found; first report {_clock_text(first)}")

    async def _cycle(self, session: Session, advance: bool) -> None:
        self.dirty = False
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
        if slot is None:
            return
        next_wall = self.clock.time() + (slot.due - self.clock.monotonic())
        self.state = replace(self.state, next_report_ms=int(next_wall * 1000))
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
        remembered = prepared.remembered
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
        self._record_history(prepared, results)
        copy_digest = self._write_local_copy(session, prepared.body, success, error)
        last = LastReport(
            int(self.clock.time() * 1000),
            prepared.session_id,
            remembered.counters.seq_number,
            success,
            error,
            tuple(results),
        )
        new_session = SessionState(
            session.key,
            remembered.session_id,
            remembered.counters.after(success),
            copy_digest or remembered.local_copy_sha256,
        )
        self.state = replace(self.state, session=new_session, last_report=last)
        self.dirty = True

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
        try:
            self.history.append(records, now_ms)
        except OSError as exc:
            log.warning(
                "history.write_failed",
                path=str(self.history.path),
                problem=exc.strerror or str(exc),
            )

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
        self._note_arrangement(session, arrangement)
        if not self.neighbour.should_stand_down(arrangement):
            return False
        if session.key not in self.neighbour.warned:
            self.neighbour.warned.add(session.key)
            log.warning(
                "beside_ray.standing_down",
                session_dir=str(session.path),
                reason="Ray's own reporter is sending this session's reports itself",
                fix="start Ray with RAY_USAGE_STATS_REPORT_URL="
                + (self.intake.url if self.intake else "<this daemon's intake>")
                + ' so that only usagestatsd sends, or set beside_ray = "report"',
            )
        self._set_status(f"Standing down: Ray's own reporter reports session {session.name}")
        return True

    def _note_arrangement(self, session: Session, arrangement: Arrangement) -> None:
        last = self.neighbour.sightings[-1].received_ms if self.neighbour.sightings else None
        extra = dict(self.state.extra)
        extra["beside_ray"] = {
            "session": session.name,
            "arrangement": arrangement.value,
            "mode": self.neighbour.mode,
            "intake": self.intake.url if self.intake else None,
            "last_ray_report_ms": last,
        }
        if extra != self.state.extra:
            self.dirty = True
        self.state = replace(self.state, extra=extra)

    def _on_sighting(self, sighting: RaySighting) -> None:
        self.neighbour.saw(sighting)
        self.ray_seen.set()
        session = self.track.session
        if session is not None and self.neighbour.last_copy is not None:
            # Ray writes its own usage_stats.json right after its POST returns: put back
            # the copy of what usagestatsd really sent, a moment later.
            data = self.neighbour.last_copy
            asyncio.get_running_loop().call_later(REWRITE_DELAY_S, self._rewrite, session, data)

    def _rewrite(self, session: Session, data: bytes) -> None:
        if self.track.session == session and still_there(session):
            with contextlib.suppress(OSError):
                write_usage_stats(session, data)

    def _refuse(self, session: Session, refusal: str) -> None:
        if session.key in self.track.refused_logged:
            return
        self.track.refused_logged.add(session.key)
        # Only an unreadable metadata answer is trouble; the other reasons are normal states.
        level = log.warning if refusal.startswith(("cluster metadata", CANNOT_READ)) else log.info
        level("session.not_reported", session_dir=str(session.path), reason=refusal)
        self._set_status(f"Not reporting session {session.name}: {refusal}")

    def _write_local_copy(
        self, session: Session, body: bytes, success: bool, error: str | None
    ) -> str | None:
        data = local_copy(body, success, error)
        # Remember the new copy's digest before writing it: killed between the write and the
        # state save, the restarted daemon must know the file as its own, not as Ray's.
        pending = {"session": session.key, "sha256": digest(data)}
        self.state = replace(self.state, extra={**self.state.extra, PENDING_COPY_KEY: pending})
        self._save_state()
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

    def _save_state(self) -> None:
        try:
            self.store.save(self.state)
        except OSError as exc:
            log.warning(
                "state.write_failed", path=str(self.store.path), problem=exc.strerror or str(exc)
            )


def run_daemon(
    settings: Settings, known: KnownIdentifiers | None = None, withheld: tuple[str, ...] = ()
) -> int:
    """Build the daemon and run its loop to completion."""
    notifier = Notifier(settings.notify_socket)

    async def main() -> int:
        daemon = Daemon(settings, notifier, known or collect_known_identifiers(), withheld=withheld)
        return await daemon.serve()

    # Start-up objects live as long as the process: keep the collector from rescanning them.
    gc.freeze()
    try:
        return asyncio.run(main())
    finally:
        notifier.close()
