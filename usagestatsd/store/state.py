"""The daemon's small persistent state: per-session counters, session_id, last result.

Kept as one JSON file in the state directory, replaced atomically after each attempt, so
the counters survive a daemon restart within a session and never go backwards. A file
that cannot be read is set aside (never deleted) and the daemon starts afresh.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from usagestatsd.base.files import UnsafeFileError, atomic_write, read_regular_file
from usagestatsd.contract.report import Counters, Origins

STATE_FILE = "state.json"
FORMAT = 1
ID_FROM_CLUSTER = "cluster_id"  # Ray's cluster id, from the provider
ID_FROM_METADATA = "cluster_metadata"  # Ray <= 2.20: the session UUID in its metadata
ID_RANDOM = "random"  # this daemon's random id (no provider at the first report)
PENDING_COPY_KEY = "local_copy_pending"


class StateError(Exception):
    """The state file exists but cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class EndpointResult:
    """How one endpoint took one report."""

    endpoint: str
    ok: bool
    status: int | None
    error: str | None
    attempts: int


@dataclass(frozen=True)
class LastReport:
    """The most recent attempt, for `status` and the STATUS= line."""

    time_ms: int
    session_id: str
    seq_number: int
    success: bool
    error: str | None
    endpoints: tuple[EndpointResult, ...] = ()


@dataclass(frozen=True)
class SessionState:
    """What is remembered about the session being reported."""

    key: str
    session_id: str
    counters: Counters = Counters()
    # SHA-256 of the usage_stats.json we last wrote: tells our writes from Ray's.
    local_copy_sha256: str | None = None
    # Where session_id came from once a report carried it (one of the ID_* above);
    # None until then. From the first report on, the id never changes for the session.
    id_source: str | None = None
    # Ray's reporter was seen reporting this session to the intake: it stays routed for the
    # whole session, so a restarted daemon does not take Ray's copy for direct reporting.
    ray_routed: bool = False

    @property
    def id_fixed(self) -> bool:
        """True once a report carried session_id: it is the session's identity from then on."""
        return self.id_source is not None


@dataclass(frozen=True)
class PendingCopy:
    """The usage_stats.json about to be written, saved before it is (key `local_copy_pending`).

    Killed between that write and the next save, the restarted daemon still knows the file
    as its own, not as Ray's (cycle/beside_ray.py tells the two apart by digest).
    """

    session: str  # the session's key
    sha256: str


@dataclass(frozen=True)
class State:
    """Everything in state.json."""

    session: SessionState | None = None
    last_report: LastReport | None = None
    local_copy_pending: PendingCopy | None = None
    # Where the last cycle's facts came from, and the cluster's Ray version (for status).
    origins: Origins | None = None

    def pending_digest(self, key: str) -> str | None:
        """The digest of the copy last about to be written for session `key`, if any."""
        pending = self.local_copy_pending
        return pending.sha256 if pending is not None and pending.session == key else None

    def for_session(self, key: str) -> SessionState:
        """The remembered state of session `key`, or a fresh one with a random session_id."""
        if self.session and self.session.key == key:
            return self.session
        return SessionState(key=key, session_id=uuid.uuid4().hex)


def _to_json(state: State) -> bytes:
    data: dict[str, Any] = {
        "format": FORMAT,
        "session": asdict(state.session) if state.session else None,
        "last_report": asdict(state.last_report) if state.last_report else None,
        "origins": _origins_json(state.origins),
    }
    if state.local_copy_pending is not None:
        data[PENDING_COPY_KEY] = asdict(state.local_copy_pending)
    return json.dumps(data, indent=1, sort_keys=True).encode() + b"\n"


def _origins_json(origins: Origins | None) -> dict[str, Any] | None:
    if origins is None:
        return None
    data = asdict(origins)
    if data["tampering"] is None:
        del data["tampering"]  # as earlier versions wrote it (they refuse a key they lack)
    return data


def _nonneg(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError("counter is not a non-negative integer")
    return value


def _from_json(data: dict[str, Any]) -> State:
    if data.get("format") != FORMAT:
        raise ValueError(f"unknown format {data.get('format')!r}")
    session = None
    if data.get("session"):
        s = data["session"]
        c = s["counters"]
        counters = Counters(
            _nonneg(c["seq_number"]), _nonneg(c["total_success"]), _nonneg(c["total_failed"])
        )
        if not isinstance(s["key"], str) or not isinstance(s["session_id"], str):
            raise ValueError("session key or id is not text")
        digest = s.get("local_copy_sha256")
        source = s.get("id_source")
        session = SessionState(
            s["key"],
            s["session_id"],
            counters,
            digest if isinstance(digest, str) else None,
            source if source in (ID_FROM_CLUSTER, ID_FROM_METADATA, ID_RANDOM) else None,
            s.get("ray_routed") is True,  # absent from older files: not known to be routed
        )
    last = None
    if data.get("last_report"):
        lr = dict(data["last_report"])
        lr["endpoints"] = tuple(EndpointResult(**e) for e in lr.get("endpoints", ()))
        last = LastReport(**lr)
    if session is not None and "id_source" not in data["session"]:
        session = _fixed_by_last_report(session, last)
    # Other keys are not read: "beside_ray", which versions up to 1.0 wrote here, and
    # "next_report_ms", which earlier versions wrote here, are in service.json now
    # (store/service_record.py).
    return State(session, last, _pending(data), _origins(data))


def _pending(data: dict[str, Any]) -> PendingCopy | None:
    raw = data.get(PENDING_COPY_KEY)
    if not isinstance(raw, dict):
        return None
    session, sha = raw.get("session"), raw.get("sha256")
    if not isinstance(session, str) or not isinstance(sha, str):
        return None  # as before: a copy of unknown digest is simply not recognised as ours
    return PendingCopy(session, sha)


def _origins(data: dict[str, Any]) -> Origins | None:
    raw = data.get("origins")
    if raw is None:
        return None
    origins = Origins(**raw)  # a missing or unknown key is a TypeError: the file is bad
    if not all(isinstance(v, (str, type(None))) for v in vars(origins).values()):
        raise ValueError("origins hold something other than text")
    return origins


def _fixed_by_last_report(session: SessionState, last: LastReport | None) -> SessionState:
    """A 1.0 state file: the id its reports carried is the last report's (saved together)."""
    if session.counters.seq_number == 0 or last is None:
        return session
    if last.session_id != session.session_id:
        return replace(session, session_id=last.session_id, id_source=ID_FROM_CLUSTER)
    return replace(session, id_source=ID_RANDOM)


class StateStore:
    """Reads and writes state.json in one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / STATE_FILE

    def load(self) -> State:
        """The saved state; a missing file is a fresh start, a broken one raises StateError."""
        try:
            raw = read_regular_file(self.path, max_bytes=1 << 20)
        except FileNotFoundError:
            return State()
        except (UnsafeFileError, OSError) as exc:
            raise StateError(f"{self.path}: {exc.strerror or exc}") from None
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            return _from_json(data)
        except (ValueError, KeyError, TypeError) as exc:
            raise StateError(f"{self.path}: {exc}") from None

    def peek(self) -> tuple[State, str | None]:
        """For read-only commands: the saved state, or an empty one and why (never moved)."""
        try:
            return self.load(), None
        except StateError as exc:
            return State(), str(exc)

    def set_aside(self) -> Path | None:
        """Move a broken state file out of the way (kept for inspection); return its new name."""
        aside = self.path.with_name(f"{STATE_FILE}.broken-{int(time.time())}")
        try:
            os.rename(self.path, aside)
        except OSError:
            return None
        return aside

    def save(self, state: State) -> None:
        """Replace state.json atomically (creating the directory, private to the daemon)."""
        self.directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        atomic_write(self.directory, STATE_FILE, _to_json(state), mode=0o640)
