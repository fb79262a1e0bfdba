"""One report cycle, start to end, as a public unit with a typed outcome.

`ReportCycle.run(session)` gathers and prepares the report (cycle/pipeline.py), refuses a session
that must not be reported (cycle/refusal.py), gives Ray's own reporter its chance and stands down
beside it (cycle/beside_ray.py), reserves the seq number in state.json, sends to every endpoint
(cycle/sender.py), saves the counters, appends to the history (store/keeper.py) and writes the
session's usage_stats.json. It returns a `CycleOutcome` saying what happened and whether
the state changed; the caller (service/reporter.py) plans the next report, puts it in the service
record, and then saves (`save`).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, replace
from enum import Enum
from typing import Protocol

import structlog

from usagestatsd.config.settings import Settings
from usagestatsd.contract.report import local_copy
from usagestatsd.cycle.beside_ray import Arrangement, BesideRay, digest
from usagestatsd.cycle.pipeline import Disclosure, Prepared, another_start, prepare_report
from usagestatsd.cycle.refusal import Refusal, cluster_refusal
from usagestatsd.cycle.sender import send_report
from usagestatsd.facts.cluster import name_tampering
from usagestatsd.facts.session import Session, still_there, write_usage_stats
from usagestatsd.facts.sources import Failure
from usagestatsd.store.history import Record, history_of
from usagestatsd.store.keeper import Keeper
from usagestatsd.store.service_record import Beside, Held
from usagestatsd.store.state import (
    EndpointResult,
    LastReport,
    PendingCopy,
    SessionState,
    State,
    StateError,
    StateStore,
)

log = structlog.get_logger()


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


class Result(Enum):
    """What one cycle did."""

    SENT = "sent"  # sent to every endpoint (LastReport says which accepted it)
    # Its seq number could not be saved first, or the facts read were of a restarted head
    # (pipeline.another_start): tried again next cycle.
    NOT_SENT = "not sent"
    REFUSED = "refused"  # the session must not be reported (`CycleOutcome.refusal` says why)
    STOOD_DOWN = "stood down"  # Ray's own reporter sends this session's reports
    VANISHED = "vanished"  # the session directory went away


@dataclass(frozen=True)
class Hold:
    """Why the session gets no report now: its kind, and the words of the record and STATUS=."""

    kind: Held
    why: str
    status: str


@dataclass(frozen=True)
class CycleOutcome:
    """What one cycle did, and whether the state changed (then the caller saves it)."""

    result: Result
    state_changed: bool
    refusal: Refusal | None = None
    hold: Hold | None = None  # set when the session gets no report now
    beside: Beside | None = None  # the arrangement beside Ray's reporter, when decided
    success: bool | None = None  # SENT: every endpoint accepted it


STANDING_DOWN = "standing down: Ray's own reporter sends this session's reports itself"


def _session_start_ms(prepared: Prepared) -> int | None:
    md = prepared.facts.metadata
    return md.session_start_timestamp_ms if md else None


def load_state(store: StateStore) -> State:
    """The saved state; an unreadable file is set aside (logged) for a fresh start."""
    try:
        return store.load()
    except StateError as exc:
        aside = store.set_aside()
        log.warning("state.unreadable", problem=str(exc), moved_to=str(aside), action="fresh start")
        return State()


class ReportCycle:
    """Runs report cycles for the daemon and owns what they change: state.json, the history,
    usage_stats.json."""

    def __init__(
        self,
        settings: Settings,
        disclosure: Disclosure,
        beside: BesideRay,
        store: StateStore,
        state: State,
        clock: Clock | None = None,
    ) -> None:
        """Takes the state as loaded (`open` loads it): building reads and moves nothing."""
        self.settings = settings
        self.disclosure = disclosure
        self.beside = beside
        self.clock = clock or SystemClock()
        self.store = store
        self.keeper = Keeper(store, history_of(settings))
        self._state = state
        self._refused_logged: set[str] = set()  # one session.not_reported per session

    @classmethod
    def open(
        cls,
        settings: Settings,
        disclosure: Disclosure,
        beside: BesideRay,
        clock: Clock | None = None,
    ) -> ReportCycle:
        """The cycle on the saved state (an unreadable state.json is set aside, logged)."""
        store = StateStore(settings.state_dir)
        return cls(settings, disclosure, beside, store, load_state(store), clock)

    @property
    def state(self) -> State:
        """The state as the last cycle left it (saved by `save`)."""
        return self._state

    def _now_ms(self) -> int:
        return int(self.clock.time() * 1000)

    def save(self) -> bool:
        """Save state.json (the history gives way on a full disk); True if saved."""
        return self.keeper.save(self._state, self._now_ms())

    async def _prepare(self, session: Session) -> Prepared:
        return await prepare_report(
            self.settings, session, self._state, self.disclosure, self._now_ms()
        )

    async def run(self, session: Session) -> CycleOutcome:
        """Gather, check, send to every endpoint, write usage_stats.json, note the counters."""
        if not still_there(session):
            log.warning("session.vanished", session_dir=str(session.path))
            return CycleOutcome(Result.VANISHED, False)
        prepared = await self._prepare(session)
        changed = prepared.facts.origins != self._state.origins
        if changed:
            name_tampering(self._state.origins, prepared.facts.origins)
            self._state = replace(self._state, origins=prepared.facts.origins)
        refusal = cluster_refusal(prepared.facts)
        # A stopped head is one info line, an unreadable one one warning: not one per socket.
        if refusal is None or refusal.kind.source_warnings:
            for problem in prepared.facts.problems:
                # A head just started has no autoscaler report yet: not worth a warning.
                level = log.info if problem.failure is Failure.NOT_YET else log.warning
                level("cluster.source_failed", source=problem.source, problem=problem.problem)
        if refusal is not None:
            self.beside.decided(session, refusal.message)
            return CycleOutcome(Result.REFUSED, changed, refusal, self._refuse(session, refusal))
        if await self.beside.wait_for_ray(_session_start_ms(prepared), self._now_ms()):
            prepared = await self._prepare(session)
        if another_start(prepared):
            log.warning(
                "session.facts_of_another_start",
                session_dir=str(session.path),
                detail="the cluster read names another session than this one's reports (Ray "
                "was restarted): nothing is sent for it; the new session is followed next",
            )
            return CycleOutcome(Result.NOT_SENT, changed)
        decision = self.beside.decide(session, _session_start_ms(prepared))
        if decision.status is not None:
            hold = Hold(Held.STANDING_DOWN, STANDING_DOWN, decision.status)
            return CycleOutcome(Result.STOOD_DOWN, changed, hold=hold, beside=decision.beside)
        self.beside.decided(session, None)
        # One event per field and reason: 250 refused instance types are one line, not 250.
        named = Counter((r.field, r.reason) for r in prepared.redactions)
        for (field, reason), values in named.items():
            extra = {"values": values} if values > 1 else {}
            log.warning("privacy.redacted", field=field, reason=reason, **extra)
        # The id this report carries is the session's from now on (pipeline.choose_session_id):
        # the reservation below already saves it, so a kill after the send cannot change it.
        remembered = replace(
            prepared.remembered,
            session_id=prepared.session_id,
            id_source=prepared.id_source,
            ray_routed=decision.beside.arrangement == Arrangement.ROUTED.value,
        )
        if not self._reserve(remembered):
            return CycleOutcome(Result.NOT_SENT, changed, beside=decision.beside)
        success = await self._send(session, prepared, remembered)
        return CycleOutcome(Result.SENT, True, beside=decision.beside, success=success)

    def _refuse(self, session: Session, refusal: Refusal) -> Hold:
        if session.key not in self._refused_logged:
            self._refused_logged.add(session.key)
            # Only an unreadable cluster is trouble; the other reasons are normal states.
            emit = log.warning if refusal.level == "warning" else log.info
            emit("session.not_reported", session_dir=str(session.path), reason=refusal.message)
        status = f"Not reporting session {session.name}: {refusal.message}"
        return Hold(Held.REFUSED, refusal.message, status)

    def _reserve(self, remembered: SessionState) -> bool:
        """Save this attempt's seq number as used (counted failed until known) before sending.

        A restart then never sends this seq number, or a lower one, again. When state.json
        cannot be saved even after the history gave way, nothing is sent: the next cycle
        tries again with the same number.
        """
        reserved = replace(remembered, counters=remembered.counters.after(False))
        previous = self._state
        self._state = replace(self._state, session=reserved)
        if self.save():
            return True
        self._state = previous
        log.warning(
            "report.not_sent",
            seq=remembered.counters.seq_number,
            reason="state.json could not be saved first, so a restart could reuse the seq number",
        )
        return False

    async def _send(self, session: Session, prepared: Prepared, remembered: SessionState) -> bool:
        """Send, then save the counters, the history and usage_stats.json, in that order."""
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
            self._now_ms(),
            prepared.session_id,
            remembered.counters.seq_number,
            success,
            error,
            tuple(results),
        )
        # Remember the new copy's digest before writing it: killed between the write and the
        # state save, the restarted daemon must know the file as its own, not as Ray's.
        outcome = replace(remembered, counters=remembered.counters.after(success))
        self._state = replace(
            self._state,
            session=outcome,
            last_report=last,
            local_copy_pending=PendingCopy(session.key, digest(copy)),
        )
        self.save()  # state first: the history is the one that gives way
        self._record_history(prepared, results)
        copy_digest = self._write_local_copy(session, copy)
        if copy_digest:
            self._state = replace(
                self._state, session=replace(outcome, local_copy_sha256=copy_digest)
            )
        return success

    def _record_history(self, prepared: Prepared, results: list[EndpointResult]) -> None:
        now_ms = self._now_ms()
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
        return self.beside.wrote(data)
