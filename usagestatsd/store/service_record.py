"""What the running daemon decided at start and why, kept in `service.json` for `status`.

`usagestatsd status` runs in another process, with another environment (a drop-in's
`Environment=` is the service's alone): it cannot recompute what the service decided. So
the daemon writes its decision down when it starts (consent and its source, endpoints,
whether its intake listens and where, the arrangement beside Ray's reporter, whether it
stands down, its next report) and again whenever that changes, and marks the record
stopped when it stops. The record also keeps the inputs of the decision (the variables
settings are read from, the command-line overrides, the settings file), so that `status`
can recompute what a restart would decide from the current files and compare.

Other users than root and the service's own cannot read the state directory: the record
also goes, without its inputs, into the document every user may read (store/published.py).

It holds no fact about the cluster, only the service's own choices. A daemon that is
disabled writes it only into a state directory that already exists (systemd's
StateDirectory=): disabled, it creates nothing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from usagestatsd.base.files import UnsafeFileError, atomic_write, read_regular_file
from usagestatsd.base.hostport import host_port
from usagestatsd.config.settings import Settings, read_variables
from usagestatsd.consent.decision import Consulted, Decision

RECORD_FILE = "service.json"
# 2: `next_report_ms` holds every planned report and `held` says what kind of hold stops
# them. 1 (up to this version): only the first report, later ones in state.json.
FORMAT = 2


class Held(Enum):
    """What kind of hold keeps the current session from being reported."""

    STANDING_DOWN = "standing down"  # Ray's own reporter sends this session's reports
    REFUSED = "refused"  # the session must not be reported (cycle/refusal.py)


# The one text a format-1 record held for a stand-down (cycle.STANDING_DOWN then).
_FORMAT1_STANDING_DOWN = "standing down: Ray's own reporter sends this session's reports itself"


@dataclass(frozen=True)
class Inputs:
    """What the decision was computed from (so that `status` can recompute it)."""

    environment: dict[str, str]
    command_line: dict[str, str]
    settings_file: str | None


@dataclass(frozen=True)
class Intake:
    """The loopback intake for Ray's reporter (docs/beside-ray.md)."""

    address: str  # host:port it was asked to listen on
    listening: bool
    url: str | None = None  # what to give Ray as RAY_USAGE_STATS_REPORT_URL, when listening
    problem: str | None = None  # why it does not listen (e.g. "Address already in use")


@dataclass(frozen=True)
class Beside:
    """How the daemon shares the current session with Ray's own reporter."""

    mode: str  # beside_ray setting: "auto" or "report"
    session: str | None = None  # session directory name
    arrangement: str = "unknown"  # beside_ray.Arrangement value
    last_ray_report_ms: int | None = None
    standing_down: bool = False


@dataclass(frozen=True)
class ServiceRecord:
    """The running (or last) daemon's decisions, as `status` shows them."""

    pid: int
    proc_start: str | None  # /proc/<pid>/stat start time: tells a reused pid from ours
    started_ms: int
    consent: Decision
    inputs: Inputs
    endpoints: tuple[str, ...] = ()
    temp_root: str = ""
    interval_s: float = 0.0
    intake: Intake | None = None  # None: the intake is off
    beside: Beside = Beside("auto")
    session: str | None = None  # the session being followed, by name
    not_reporting: str | None = None  # why the current session gets no report, if it does not
    held: str | None = None  # the kind of that hold: a Held value
    next_report_ms: int | None = None  # the next planned report, the only place it is kept
    # The STATUS= line that explains a standing decision (waiting without an intake, held,
    # disabled, stopped); None while reports flow (then systemctl shows each one).
    status_line: str | None = None
    stopped_ms: int | None = None
    format: int = FORMAT  # the version of the service that wrote it (see FORMAT)


def proc_start(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = raw.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else None


def is_running(record: ServiceRecord) -> bool:
    """True while the process that wrote the record still runs (and is that process)."""
    if record.stopped_ms is not None:
        return False
    now = proc_start(record.pid)
    return now is not None and now == record.proc_start


def inputs_of(environ: dict[str, str], cli: dict[str, object], config: Path | None) -> Inputs:
    """The inputs of this start's decision: only the variables settings are read from.

    `config` is the --config given, if any (the default file is looked for again).
    """
    names = read_variables()
    return Inputs(
        {k: v for k, v in environ.items() if k in names},
        {k: str(v) for k, v in cli.items() if v is not None},
        str(config) if config is not None else None,
    )


def new_record(settings: Settings, decision: Decision, inputs: Inputs) -> ServiceRecord:
    """The record of a daemon starting now."""
    pid = os.getpid()
    intake = settings.ray_intake
    return ServiceRecord(
        pid=pid,
        proc_start=proc_start(pid),
        started_ms=int(time.time() * 1000),
        consent=decision,
        inputs=inputs,
        endpoints=tuple(e.display for e in settings.endpoints),
        temp_root=str(settings.temp_root),
        interval_s=settings.report_interval_s,
        intake=None if intake is None else Intake(host_port(*intake), False),
        beside=Beside(settings.beside_ray),
    )


def restamped(record: ServiceRecord) -> ServiceRecord:
    """The record for this process (after a fork: --daemonize)."""
    pid = os.getpid()
    return replace(record, pid=pid, proc_start=proc_start(pid))


# -- the file -------------------------------------------------------------------------


def _to_json(record: ServiceRecord) -> bytes:
    data = asdict(replace(record, format=FORMAT))
    return json.dumps(data, indent=1, sort_keys=True).encode() + b"\n"


def _from_json(data: dict[str, Any]) -> ServiceRecord:
    if data.get("format") not in (1, FORMAT):
        raise ValueError(f"unknown format {data.get('format')!r}")
    return record_from_dict(data)


def record_from_dict(data: dict[str, Any]) -> ServiceRecord:
    """A record from its fields as `asdict` gives them (service.json, status.json).

    Without a format (status.json of a version that wrote format-1 records) it is 1.
    """
    fields = dict(data)
    fields["format"] = fields.get("format", 1)
    if fields["format"] == 1 and fields.get("not_reporting"):
        # Format 1 kept only the words; a stand-down's were always the same.
        standing_down = fields["not_reporting"] == _FORMAT1_STANDING_DOWN
        fields["held"] = (Held.STANDING_DOWN if standing_down else Held.REFUSED).value
    consent = dict(fields["consent"])
    consent["consulted"] = tuple(Consulted(**c) for c in consent.get("consulted", ()))
    fields["consent"] = Decision(**consent)
    fields["inputs"] = Inputs(**fields["inputs"])
    fields["intake"] = Intake(**fields["intake"]) if fields.get("intake") else None
    fields["beside"] = Beside(**fields["beside"])
    fields["endpoints"] = tuple(fields.get("endpoints", ()))
    return ServiceRecord(**fields)


class RecordStore:
    """Reads and writes service.json in the state directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / RECORD_FILE

    def load(self) -> tuple[ServiceRecord | None, str | None]:
        """The record, or None and why not (None, None: there is none)."""
        try:
            raw = read_regular_file(self.path, max_bytes=1 << 20)
        except FileNotFoundError:
            return None, None
        except (UnsafeFileError, OSError) as exc:
            return None, f"{self.path}: {exc.strerror or exc}"
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            return _from_json(data), None
        except (ValueError, KeyError, TypeError) as exc:
            return None, f"{self.path}: {exc}"

    def save(self, record: ServiceRecord, create: bool = True) -> None:
        """Replace service.json atomically; with create=False, only into an existing dir."""
        if create:
            self.directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        elif not self.directory.is_dir():
            return
        atomic_write(self.directory, RECORD_FILE, _to_json(record), mode=0o640)


@dataclass
class RecordKeeper:
    """The daemon's side: change the record, write it when it changed (errors are logged)."""

    store: RecordStore
    record: ServiceRecord
    problems: list[str] = field(default_factory=list)
    # Told each record written, for every user's status.json (store/published.py).
    on_write: Callable[[ServiceRecord], None] | None = None

    def update(self, **changes: Any) -> None:
        """Apply changes; write the file only when something changed."""
        new = replace(self.record, **changes)
        if new != self.record:
            self.record = new
            self.write()

    def write(self) -> None:
        """Write the record now; a failure is kept for the caller to log once."""
        try:
            self.store.save(self.record)
        except OSError as exc:
            self.problems.append(f"{self.store.path}: {exc.strerror or exc}")
        if self.on_write is not None:
            self.on_write(self.record)
