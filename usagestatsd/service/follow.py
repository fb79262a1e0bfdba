"""Which Ray session the daemon follows, and when its next report is due.

Looked at at the session poll rate and whenever inotify sees the temp root change
(watch.py). A new
session gets its first slot (service/schedule.py); a session that went away ends the plan. The
reporter (service/reporter.py) turns each change into a log line, a STATUS= line and the service
record.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from usagestatsd.config.settings import Settings
from usagestatsd.facts.session import (
    Discovery,
    Session,
    find_session,
    trusted_uids,
    untrusted_text,
    user_label,
)
from usagestatsd.service.schedule import Schedule, Slot

log = structlog.get_logger()


def _refused(found: Discovery) -> dict[str, str]:
    return {"refused": found.refused} if found.refused else {}


@dataclass(frozen=True)
class Change:
    """The followed session changed: `session` is the new one (None: none any more)."""

    session: Session | None
    first_due: float | None = None  # monotonic time of its first report
    untrusted: str | None = None  # no session: Ray's directories belong to an untrusted user


class SessionFollower:
    """The followed session and its report slot."""

    def __init__(self, settings: Settings, schedule: Schedule) -> None:
        self.settings = settings
        self.schedule = schedule
        self.session: Session | None = None
        self.slot: Slot | None = None
        self._missing_logged = False
        self._untrusted_warned: int | None = None
        self.looks = 0  # looks at the temp root so far (each walks /proc)

    def follow(self, now: float) -> Change | None:
        """Look at the temp root; the change, or None when the same session is still there."""
        self.looks += 1
        # Numbered, so that how often the daemon looks (inotify coalesces) can be counted.
        log.debug("session.looked", looks=self.looks)
        found = find_session(self.settings.temp_root, trusted_uids(self.settings.ray_user))
        if found.session is None:
            if self.session is not None or not self._missing_logged:
                log.info(
                    "session.missing", temp_root=str(self.settings.temp_root), **_refused(found)
                )
                self._missing_logged = True
            self.session, self.slot = None, None
            return Change(None, untrusted=self._untrusted(found))
        if self.session is not None and self.session.key == found.session.key:
            return None
        self.session = found.session
        self.slot = self.schedule.first(now)
        self._missing_logged = False
        log.info("session.found", session_dir=str(found.session.path), **_refused(found))
        return Change(found.session, self.slot.due)

    def _untrusted(self, found: Discovery) -> str | None:
        """What to tell of Ray's directories owned by an untrusted user (warned once each)."""
        owner = found.untrusted_owner
        if owner is None:
            self._untrusted_warned = None
            return None
        who = user_label(owner)
        text = untrusted_text(self.settings.temp_root, owner)
        if self._untrusted_warned != owner:
            log.warning("session.untrusted", temp_root=str(self.settings.temp_root),
                        owner=who, problem=found.refused, fix="sudo usagestatsd setup")  # fmt: skip
            self._untrusted_warned = owner
        return text

    def advance(self, session: Session, now: float) -> None:
        """The slot after the one just reported, if `session` is still the one followed."""
        if self.slot is not None and self.session == session:
            self.slot = self.schedule.after(self.slot, now)

    def pull_first(self, now: float) -> bool:
        """Make the first report due now (it was not sent yet); True if it was later."""
        if self.slot is None or self.slot.index != 0 or self.slot.due <= now:
            return False
        self.slot = Slot(now, 0)
        return True

    def ray_uids(self) -> set[int]:
        """Who may report to the intake as Ray's reporter: root, ray_user, the session's owner."""
        ray_user = self.settings.ray_user
        trusted = trusted_uids(ray_user)
        session = self.session or find_session(self.settings.temp_root, trusted).session
        uids = {0} | ({ray_user} if ray_user is not None else set())
        return uids | ({session.owner_uid} if session is not None else set())
