"""What the daemon tells systemd (the STATUS= line) and `usagestatsd status` (service.json).

One method per thing that happened: waiting for a session, a session found, a session held
(refused, or standing down beside Ray's reporter), the next report planned, the intake, the
stop. Each goes to the service record (store/service_record.py), the one document `status` renders,
and the STATUS= line is made from the same values. The record is rewritten only when it
changes: at a decision, and once per report for the next report's time.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import structlog

from usagestatsd.base.sdnotify import Notifier
from usagestatsd.cycle.run import Hold
from usagestatsd.service.intake import RayIntake
from usagestatsd.store.service_record import (
    Beside,
    Intake,
    RecordKeeper,
    RecordStore,
    ServiceRecord,
)
from usagestatsd.store.state import LastReport

log = structlog.get_logger()


def clock_text(epoch_s: float) -> str:
    """A wall time as STATUS= shows it."""
    return time.strftime("%H:%M:%S", time.localtime(epoch_s))


class Announcer:
    """The STATUS= line (sent only when it changes) and the service record."""

    def __init__(
        self, notifier: Notifier, temp_root: Path, state_dir: Path, record: ServiceRecord | None
    ) -> None:
        self.notifier = notifier
        self.temp_root = temp_root
        self.service = RecordKeeper(RecordStore(state_dir), record) if record else None
        self.last_status = ""
        self._held: str | None = None  # why the current session gets no report (stand-down...)

    @property
    def holding(self) -> bool:
        """True while the current session gets no report (no next report is planned)."""
        return self._held is not None

    def cycle_started(self) -> None:
        """A cycle decides afresh whether the session is held."""
        self._held = None

    def _status(self, text: str) -> None:
        if text != self.last_status:
            self.last_status = text
            self.notifier.status(text)

    def _record(self, **changes: Any) -> None:
        """Update the service record; a failure to write it is logged (once each)."""
        if self.service is None:
            return
        self.service.update(**changes)
        if self.service.problems:
            log.warning("service_record.write_failed", problem=self.service.problems[-1])
            self.service.problems.clear()

    def waiting_text(self) -> str:
        return f"Waiting for a Ray session under {self.temp_root}"

    def ready(self, text: str) -> None:
        """The daemon is ready (READY=1), with its first STATUS= line."""
        self.notifier.ready(text)
        self.last_status = text
        self._record(status_line=text)

    def intake(self, intake: RayIntake) -> None:
        """Whether the intake for Ray's reporter listens, and where."""
        if self.service is None or self.service.record.intake is None:
            return
        asked = self.service.record.intake.address
        if intake.problem is None:
            self._record(intake=Intake(asked, True, intake.url))
        else:
            self._record(intake=Intake(asked, False, None, intake.problem))

    def no_session(self, untrusted: str | None = None) -> None:
        waiting = f"Not reporting: {untrusted}" if untrusted else self.waiting_text()
        self._status(waiting)
        self._record(
            session=None, not_reporting=None, held=None, next_report_ms=None, status_line=waiting
        )

    def session_found(self, name: str, first_wall: float) -> None:
        self._held = None
        self._status(f"Session {name} found; first report {clock_text(first_wall)}")
        self._record(
            session=name,
            not_reporting=None,
            held=None,
            next_report_ms=int(first_wall * 1000),
            status_line=None,
        )

    def beside(self, beside: Beside) -> None:
        """How the session is shared with Ray's own reporter."""
        self._record(beside=beside)

    def hold(self, name: str, hold: Hold) -> None:
        """The current session gets no report now: say why, and plan no report."""
        self._held = hold.why
        self._status(hold.status)
        self._record(
            session=name,
            not_reporting=hold.why,
            held=hold.kind.value,
            next_report_ms=None,
            status_line=hold.status,
        )

    def planned(self, next_wall: float, last: LastReport | None) -> None:
        """The next report is planned at `next_wall`; the STATUS= line says the last one."""
        self._record(
            not_reporting=None, held=None, next_report_ms=int(next_wall * 1000), status_line=None
        )
        if last is None:
            return
        outcome = "ok" if last.success else "failed"
        self._status(
            f"Last report {clock_text(last.time_ms / 1000)} {outcome} (seq {last.seq_number}); "
            f"next {clock_text(next_wall)}"
        )

    def stopping(self) -> None:
        """STOPPING=1: the daemon is shutting down."""
        self.notifier.stopping()

    def stopped(self, stopped_ms: int) -> None:
        self._record(stopped_ms=stopped_ms, next_report_ms=None, status_line="Stopped")
