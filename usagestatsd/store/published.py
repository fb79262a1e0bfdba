"""The service's facts for every local user: `<runtime_dir>/status.json` (mode 0644).

The state directory is the service's own (systemd's StateDirectory=, owned by its user,
files 0640): root and that user may read it, nobody else. `status`, `history` and
`preview` run by any other user would see nothing there, and a user's own defaults name
another state directory altogether. So the service, and only the service, publishes what
those commands need in one world-readable document, rewritten atomically whenever its
record or state changes: its record (without the inputs of its decision, which are its
environment), its state (counters, session_id, last and next report) and the tail of its
history (the bodies are what Ray's world-readable usage_stats.json holds anyway). No
credential and no endpoint URL with userinfo is ever in it: endpoints are shown as
`Endpoint.display` shows them.

A command reads the state directory when it can, the document when it cannot, and says
so plainly (with the command to run) when it can read neither: never "no reports" or
"not running" when the truth is "cannot read". Design: docs/design.md, "Privilege model".
"""

from __future__ import annotations

import json
import os
import pwd
import stat
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import structlog

from usagestatsd.base.files import atomic_write, read_regular_file
from usagestatsd.config.settings import Settings
from usagestatsd.store.history import HISTORY_FILE, Record, parse_record
from usagestatsd.store.service_record import (
    RECORD_FILE,
    Inputs,
    RecordStore,
    ServiceRecord,
    record_from_dict,
)
from usagestatsd.store.state import STATE_FILE, State, StateStore
from usagestatsd.store.state import _from_json as state_from_dict  # state.json's own format
from usagestatsd.store.state import _to_json as state_json

PUBLISHED_FILE = "status.json"
FORMAT = 1
# The history's tail kept in the document: the last day or so of hourly reports.
HISTORY_TAIL_BYTES = 64 << 10
NO_INPUTS = Inputs({}, {}, None)

log = structlog.get_logger()


@dataclass(frozen=True)
class Published:
    """The document as a command reads it."""

    path: Path
    state_dir: Path
    record: ServiceRecord | None
    state: State
    history: list[Record]
    # Who wrote it: the service's own uid (systemd makes the runtime directory the
    # service's, and only it and root may write there), trusted like the service itself.
    owner_uid: int | None = None


# -- the service's side ------------------------------------------------------------------


class Publisher:
    """Rewrites status.json from the service's latest record and state (one writer)."""

    def __init__(self, settings: Settings) -> None:
        self.directory = settings.runtime_dir
        self.state_dir = settings.state_dir
        self.record: ServiceRecord | None = None
        self.state = State()
        self._failing = False  # a write failure is logged once, until a write succeeds

    def record_changed(self, record: ServiceRecord) -> None:
        """The service record was rewritten: publish it."""
        self.record = record
        self.publish()

    def state_changed(self, state: State) -> None:
        """state.json (and the history) were written: publish them."""
        self.state = state
        self.publish()

    def publish(self) -> None:
        """Write the document now; a failure is logged once, and the service goes on."""
        # Only into an existing directory (systemd's RuntimeDirectory=, or one the operator
        # made): a service run by hand, or a test's, leaves the machine's /run alone.
        if not self.directory.is_dir():
            if not self._failing:
                log.info(
                    "published.no_directory",
                    path=str(self.directory),
                    detail="only root and the service's user can see what it does",
                )
            self._failing = True
            return
        try:
            atomic_write(self.directory, PUBLISHED_FILE, self._document(), mode=0o644)
        except OSError as exc:
            if not self._failing:
                log.warning(
                    "published.write_failed",
                    path=str(self.directory / PUBLISHED_FILE),
                    problem=exc.strerror or str(exc),
                    detail="only root and the service's user can see what it does",
                )
            self._failing = True
            return
        self._failing = False

    def _document(self) -> bytes:
        record = None
        if self.record is not None:  # its inputs are the service's environment: not shown
            record = asdict(replace(self.record, inputs=NO_INPUTS))
        data = {
            "format": FORMAT,
            "written_ms": int(time.time() * 1000),
            "state_dir": str(self.state_dir),
            "record": record,
            "state": json.loads(state_json(replace(self.state, local_copy_pending=None))),
            "history": [asdict(r) for r in history_tail(self.state_dir / HISTORY_FILE)],
        }
        return json.dumps(data, indent=1, sort_keys=True).encode() + b"\n"


def history_tail(path: Path, max_bytes: int = HISTORY_TAIL_BYTES) -> list[Record]:
    """The newest intact records within the last `max_bytes` of the history (no whole read)."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            handle.seek(max(0, size - max_bytes))
            data = handle.read(max_bytes)
    except OSError:
        return []
    lines = data.split(b"\n")
    if size > max_bytes:
        lines = lines[1:]  # the first line is cut
    return [r for r in (parse_record(line) for line in lines[:-1] if line) if r is not None]


# -- the commands' side ------------------------------------------------------------------


def read_published(directory: Path) -> tuple[Published | None, str | None]:
    """The document, or None and why not (None, None: there is none)."""
    path = directory / PUBLISHED_FILE
    try:
        data = json.loads(read_regular_file(path, max_bytes=4 << 20))
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not a status document of this version")
        record = data["record"]
        history = [parse_record(json.dumps(r).encode()) for r in data["history"]]
        return Published(
            path,
            Path(data["state_dir"]),
            record_from_dict(record) if record else None,
            state_from_dict(data["state"]),
            [r for r in history if r is not None],
            os.stat(path, follow_symlinks=False).st_uid,
        ), None
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"{path}: {exc.strerror or exc}"
    except (ValueError, KeyError, TypeError) as exc:
        return None, f"{path}: {exc}"


def service_state_dir(settings: Settings, published: Published | None) -> Path:
    """The service's state directory: the one it publishes, unless this command was told one.

    A command's own default is not the service's (a user's is under its home), and the
    service may have been given another by systemd ($STATE_DIRECTORY) alone.
    """
    own = settings.state_dir
    if settings.was_set("state_dir"):
        return own
    if published is not None:
        return published.state_dir
    # No document (the service has not run since boot, or publishes nowhere): a user's own
    # default holds no record of the system's service, whose directory is the declared one.
    system = Settings.state_dir
    if own != system and not (own / RECORD_FILE).exists() and system.exists():
        return system
    return own


def cannot_read(path: Path, command: str) -> str | None:
    """Why this user cannot read `path`, in words, with the command to run; None if it can
    (or it does not exist: that is another answer)."""
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
        return None
    except FileNotFoundError:
        return None
    except PermissionError:
        pass
    except OSError:
        return None  # not a permission problem: the reader says what it is
    blocker = path
    try:
        info = os.stat(path)
    except OSError:
        blocker = path.parent  # the directory keeps this user out
        try:
            info = os.stat(blocker)
        except OSError:
            return f"cannot read {path}: run `sudo usagestatsd {command}`"
    owner = _user_name(info.st_uid)
    mode = stat.S_IMODE(info.st_mode)
    where = f"owned by {owner}, mode {mode:04o}"
    if blocker != path:
        where = f"its directory {blocker} is {where}"
    return f"cannot read {path} ({where}): run `sudo usagestatsd {command}`"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def describe_source(published: Published) -> str:
    """How a command says where its facts came from when it shows the document's."""
    return f"from {published.path}, which the service publishes for every user"


@dataclass(frozen=True)
class Facts:
    """The service's record and state, from its state directory or its published document."""

    state_dir: Path
    record: ServiceRecord | None
    record_problem: str | None
    state: State
    state_problem: str | None
    published: Published | None = None  # set when the facts are the document's
    denied: bool = False  # this user may read neither the directory nor the document


def service_facts(settings: Settings) -> Facts:
    """Read the state directory if this user can, else the document; else say why not."""
    published, published_problem = read_published(settings.runtime_dir)
    state_dir = service_state_dir(settings, published)
    blocked = cannot_read(state_dir / RECORD_FILE, "status") or cannot_read(
        state_dir / STATE_FILE, "status"
    )
    if blocked is None:
        record, record_problem = RecordStore(state_dir).load()
        state, state_problem = StateStore(state_dir).peek()
        return Facts(state_dir, record, record_problem, state, state_problem)
    if published is not None and published.state_dir == state_dir:
        return Facts(state_dir, published.record, None, published.state, None, published)
    if published_problem:
        blocked += f" (and {published_problem})"
    return Facts(state_dir, None, blocked, State(), blocked, denied=True)
