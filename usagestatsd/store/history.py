"""A bounded, crash-safe history of every report attempt (and deletion request).

One JSON object per line in `<state_dir>/history.jsonl`, appended with O_APPEND and
fsynced. A record torn by a crash (no final newline, or not valid JSON) is skipped when
reading and never glued to the next record. The file is kept under a size cap and an age
cap by rewriting it atomically (newest records kept) when either is exceeded.

The history is the one that gives way when its file system fills:
`state.json` lives beside it and must always fit. An append never leaves less than
`FREE_SPACE_RESERVE` free (the oldest records are dropped to make room, or the append is
refused), and `give_way` frees space for the daemon's state when a save meets ENOSPC.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from usagestatsd.base.files import (
    UnsafeFileError,
    atomic_write,
    give_to_directory_owner,
    open_directory,
    read_regular_file,
)
from usagestatsd.config.settings import Settings

HISTORY_FILE = "history.jsonl"
# The declared defaults (config/settings.py), for a History made without settings.
DEFAULT_MAX_BYTES = Settings.history_max_bytes
DEFAULT_MAX_AGE_DAYS = Settings.history_max_age_days
# After compaction the file is at most this share of the cap, so it is not rewritten
# on every append once it is full.
_KEEP_SHARE = 0.75
# Free space an append must leave on the state directory's file system: state.json is
# about 2 KiB and its atomic rewrite needs a second copy for a moment; 64 KiB is ample.
FREE_SPACE_RESERVE = 64 << 10
_FULL = (errno.ENOSPC, errno.EDQUOT)


class HistoryFull(OSError):
    """An append was refused: it would have left less than the reserve free."""


@dataclass(frozen=True)
class Record:
    """One attempt: what was sent where, the outcome, and the exact body."""

    kind: str  # "report" or "deletion"
    time_ms: int
    session_id: str
    endpoint: str
    outcome: str  # "sent", "failed", "deleted", "unknown_session", "deletion_failed"
    status: int | None
    error: str | None
    sha256: str | None
    body: str | None  # the exact bytes sent (reports are ASCII JSON), None for deletions

    def to_line(self) -> bytes:
        """The record as one JSONL line."""
        return json.dumps(asdict(self), separators=(",", ":")).encode() + b"\n"


_FIELDS = set(Record.__dataclass_fields__)


def parse_record(line: bytes) -> Record | None:
    """One history line as a Record; None when it is damaged."""
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or set(data) != _FIELDS:
        return None
    if not isinstance(data["time_ms"], int) or not isinstance(data["session_id"], str):
        return None
    return Record(**data)


@dataclass(frozen=True)
class Loaded:
    """The records that could be read, and how many lines were damaged and skipped."""

    records: list[Record]
    skipped: int


class History:
    """The history file of one state directory."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_age_days: float = DEFAULT_MAX_AGE_DAYS,
        reserve_bytes: int = FREE_SPACE_RESERVE,
    ) -> None:
        self.directory = directory
        self.path = directory / HISTORY_FILE
        self.max_bytes = max_bytes
        self.reserve_bytes = reserve_bytes
        self.max_age_ms = int(max_age_days * 86400 * 1000)

    def load(self) -> Loaded:
        """Every intact record, oldest first; a missing file is an empty history."""
        try:
            data = read_regular_file(self.path, max_bytes=max(self.max_bytes * 2, 1 << 20))
        except FileNotFoundError:
            return Loaded([], 0)
        lines = data.split(b"\n")
        torn_tail = 1 if lines and lines[-1] else 0  # no final newline: a torn last record
        records, skipped = [], torn_tail
        for line in lines[:-1]:
            if not line:
                continue
            record = parse_record(line)
            if record is None:
                skipped += 1
            else:
                records.append(record)
        return Loaded(records, skipped)

    def append(self, records: Iterable[Record], now_ms: int) -> int:
        """Append records durably, then enforce the caps; returns how many old records were
        dropped to keep the free-space reserve (not those past the caps).

        Raises HistoryFull when even an empty history would leave too little free space.
        """
        payload = b"".join(r.to_line() for r in records)
        if not payload:
            return 0
        self.directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        dropped = 0
        if self.free_bytes() - len(payload) - 1 < self.reserve_bytes:
            dropped = self.give_way(len(payload) + 1, now_ms)
            if self.free_bytes() - len(payload) - 1 < self.reserve_bytes:
                raise HistoryFull(errno.ENOSPC, "too little free space left", str(self.path))
        fd = self._open_for_append()
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                payload = b"\n" + payload  # end a torn record instead of extending it
            _write_all(fd, payload, size)
            size += len(payload)
        finally:
            os.close(fd)
        if size > self.max_bytes or self._oldest_too_old(now_ms):
            self.compact(now_ms)
        return dropped

    def _open_for_append(self) -> int:
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        dir_fd = open_directory(self.directory)
        try:
            fd = os.open(HISTORY_FILE, flags, 0o640, dir_fd=dir_fd)
            try:
                give_to_directory_owner(fd, dir_fd)
            except OSError:
                os.close(fd)
                raise
            return fd
        finally:
            os.close(dir_fd)

    def free_bytes(self) -> int:
        """Free space for us on the file system of the history (unlimited if unknown)."""
        try:
            fs = os.statvfs(self.directory)
        except OSError:
            return 1 << 62
        return fs.f_bavail * fs.f_frsize

    def give_way(self, need: int, now_ms: int) -> int:
        """Drop the oldest records until `need` bytes plus the reserve are free; how many went.

        The newest records that fit are kept; when even rewriting those does not fit, the
        history is emptied: records may be lost, the daemon's state never.
        """
        try:
            size = os.stat(self.path, follow_symlinks=False).st_size
        except FileNotFoundError:
            return 0
        free = self.free_bytes()
        # The kept part is written beside the old file before it goes: it must fit in `free`
        # now, and leave `need` plus the reserve once the old file is gone.
        keep = min(free - self.reserve_bytes, free + size - need - self.reserve_bytes, size // 2)
        try:
            return self.compact(now_ms, keep_bytes=max(0, keep))
        except OSError as exc:
            if exc.errno not in _FULL:
                raise
            return self.compact(now_ms, keep_bytes=0)

    def _oldest_too_old(self, now_ms: int) -> bool:
        try:
            with open(self.path, "rb") as handle:
                first = parse_record(handle.readline(1 << 20))
        except OSError:
            return False
        return first is not None and now_ms - first.time_ms > self.max_age_ms

    def compact(
        self,
        now_ms: int,
        drop_sessions: frozenset[str] = frozenset(),
        keep_bytes: int | None = None,
    ) -> int:
        """Rewrite keeping the newest records within both caps; returns how many were dropped.

        `keep_bytes` overrides the size kept (a share of the cap) when space must be made.

        The file is streamed twice, a line at a time (which records stay, then those records),
        so memory does not grow with the file: reading a 10 MiB history whole left the daemon
        about 30 MB larger for good.
        """
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            atomic_write(self.directory, HISTORY_FILE, b"", mode=0o640)
            return 0
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UnsafeFileError(errno.EINVAL, "not a regular file", str(self.path))
            sizes = array("L")  # per line: its record's size if fresh, else 0
            records = 0
            for line in handle:
                record = parse_record(line) if line.endswith(b"\n") else None  # torn: no newline
                records += record is not None
                fresh = (
                    record is not None
                    and now_ms - record.time_ms <= self.max_age_ms
                    and record.session_id not in drop_sessions
                )
                sizes.append(len(record.to_line()) if record is not None and fresh else 0)
            first, total = len(sizes), 0
            limit = self.max_bytes * _KEEP_SHARE if keep_bytes is None else keep_bytes
            for index in range(len(sizes) - 1, -1, -1):  # the newest fresh records that fit
                if sizes[index]:
                    if total + sizes[index] > limit:
                        break
                    first, total = index, total + sizes[index]

            def kept() -> Iterator[bytes]:
                handle.seek(0)
                for index, line in enumerate(handle):
                    record = parse_record(line) if index >= first and sizes[index] else None
                    if record is not None:
                        yield record.to_line()

            atomic_write(self.directory, HISTORY_FILE, kept(), mode=0o640)
        return records - sum(1 for size in sizes[first:] if size)

    def purge_sessions(self, session_ids: Iterable[str], now_ms: int) -> int:
        """Remove every record of these sessions (after a confirmed deletion)."""
        if not self.path.exists():
            return 0
        return self.compact(now_ms, frozenset(session_ids))


def _write_all(fd: int, payload: bytes, size: int) -> None:
    """Write every byte (a full disk may take only part), or take the part back and raise."""
    view = memoryview(payload)
    try:
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)  # our own partial record: never leave half a line
        raise


def history_of(settings: Settings, directory: Path | None = None) -> History:
    """The history store the settings describe (shared by the daemon and the commands), in
    `directory` when given (the service's, as a command found it)."""
    return History(
        directory or settings.state_dir, settings.history_max_bytes, settings.history_max_age_days
    )


def summarise_sessions(records: Iterable[Record]) -> list[dict[str, Any]]:
    """Per session_id: first and last report and the endpoints it went to."""
    sessions: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.kind != "report":
            continue
        entry = sessions.setdefault(
            r.session_id,
            {
                "session_id": r.session_id,
                "first_ms": r.time_ms,
                "last_ms": r.time_ms,
                "endpoints": [],
            },
        )
        entry["first_ms"] = min(entry["first_ms"], r.time_ms)
        entry["last_ms"] = max(entry["last_ms"], r.time_ms)
        if r.endpoint not in entry["endpoints"]:
            entry["endpoints"].append(r.endpoint)
    return sorted(sessions.values(), key=lambda e: e["first_ms"])
