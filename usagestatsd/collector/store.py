"""The storage both backends share: ingest with rollups, deletion, retention, the aggregates.

The SQL is written once with `?` placeholders; a backend converts them if its driver wants
another style. One writer (the collector's writer thread) calls the write methods; reads
go through a second connection so the page never waits behind a batch of inserts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from usagestatsd.collector.migrations import CREATE_VERSIONS, pending
from usagestatsd.collector.validate import SESSION_FACTS as SESSION_FACTS  # the copy's too
from usagestatsd.collector.validate import Accepted
from usagestatsd.contract.fields import BY_NAME, Json

DAY_MS = 86_400_000
# What a report can be, once offered to the store.
NEW, DUPLICATE, CONFLICT, AHEAD = "new", "duplicate", "conflict", "ahead"
# How far a session's seq_number may jump past its newest stored one: a head reports
# hourly, so this is six weeks of reports the collector missed. Anyone holding an ingest
# token could otherwise post a session's far-future seq_numbers: its facts would stand
# for good and the head's own next reports would be taken for repeats.
SEQ_WINDOW = 1000
# A session silent this long (a stopped cluster, or one whose sender could not reach
# the collector) may start again at any seq_number.
RESTART_AFTER_MS = 7 * DAY_MS
_ROWS_PER_INSERT = 200

_INSERT_REPORTS = (
    "INSERT INTO reports (session_id, seq_number, received_ms, collect_ms, body) VALUES {rows} "
    "ON CONFLICT (session_id, seq_number) DO NOTHING RETURNING session_id, seq_number"
)
# The newest report of a session (highest seq_number) sets its facts; any report extends
# its seen-range. CASE instead of MAX/GREATEST: the same text runs on both backends.
_UPSERT_SESSION = (
    "INSERT INTO sessions (session_id, first_ms, last_ms, reports, seq_number, "
    + ", ".join(SESSION_FACTS)
    + ") VALUES (?, ?, ?, ?, ?, "
    + ", ".join("?" for _ in SESSION_FACTS)
    + ") ON CONFLICT (session_id) DO UPDATE SET "
    "last_ms = CASE WHEN excluded.last_ms > sessions.last_ms "
    "THEN excluded.last_ms ELSE sessions.last_ms END, "
    "reports = sessions.reports + excluded.reports, "
    + ", ".join(
        f"{name} = CASE WHEN excluded.seq_number >= sessions.seq_number "
        f"THEN excluded.{name} ELSE sessions.{name} END"
        for name in (*SESSION_FACTS, "seq_number")
    )
)
# The column types of each statement's rows, for a backend that sends them as arrays.
# The facts' types follow their fields' declarations, so a fact added there needs no edit here.
_SQL_TYPE = {Json.STRING: "TEXT", Json.INTEGER: "BIGINT", Json.NUMBER: "DOUBLE PRECISION"}
_SESSION_TYPES: tuple[str, ...] = ("TEXT", "BIGINT", "BIGINT", "BIGINT", "BIGINT")
_SESSION_TYPES += tuple(_SQL_TYPE[BY_NAME[name].json] for name in SESSION_FACTS)
_FACET_TYPES = ("TEXT", "TEXT", "TEXT")
_DAY_TYPES = ("TEXT", "BIGINT", "TEXT")
_INSERT_FACET = (
    "INSERT INTO session_facets (session_id, facet, value) VALUES (?, ?, ?) "
    "ON CONFLICT (session_id, facet, value) DO NOTHING"
)
_INSERT_DAY = (
    "INSERT INTO session_days (session_id, day, ray_version) VALUES (?, ?, ?) "
    "ON CONFLICT (session_id, day) DO NOTHING"
)


class Cursor(Protocol):
    """What both drivers' cursors offer and this module uses."""

    rowcount: int

    def fetchall(self) -> list[Any]: ...

    def fetchone(self) -> Any: ...


@dataclass(frozen=True)
class StoredReport:
    """One stored report as the session page shows it."""

    seq_number: int
    received_ms: int
    body: str


class SqlStore:
    """The shared logic; a backend supplies connections, transactions and placeholders."""

    backend = "sql"

    def __init__(self, write_conn: Any, read_conn: Any) -> None:
        self._w = write_conn
        self._r = read_conn
        self._read_lock = threading.Lock()

    @property
    def write_connection(self) -> Any:
        """The writer's connection, for work done with no writer thread (`copy`)."""
        return self._w

    # -- hooks a backend provides -------------------------------------------------------
    def sql(self, text: str) -> str:
        """The statement in the driver's placeholder style."""
        return text

    def transaction(self, conn: Any) -> AbstractContextManager[None]:
        """A transaction on `conn` that commits on success and rolls back on error."""
        raise NotImplementedError

    def run(self, conn: Any, text: str, params: Sequence[Any] = ()) -> Cursor:
        """Execute one statement."""
        cursor: Cursor = conn.execute(self.sql(text), params)
        return cursor

    def run_many(self, conn: Any, text: str, rows: Sequence[Sequence[Any]]) -> None:
        """Execute one statement for each row."""
        if rows:
            conn.cursor().executemany(self.sql(text), rows)

    def insert_many(
        self, conn: Any, text: str, rows: Sequence[Sequence[Any]], types: Sequence[str]
    ) -> None:
        """Execute `INSERT ... VALUES (?, ...) ...` for each row, in order (`types`: the SQL
        type of each column, for a backend that sends all rows as one statement)."""
        self.run_many(conn, text, rows)

    def lock_schema(self) -> None:
        """Inside the migration's transaction, before anything is read: keep every other
        collector on the same database out until this one has committed its migrations."""

    def scrub(self) -> None:
        """After a committed deletion: make the backend drop the old copies it still holds
        (SQLite's write-ahead log, PostgreSQL's dead tuples)."""

    def recover(self, which: str) -> None:
        """After a failed statement: replace a broken connection ('write' or 'read')."""

    def close(self) -> None:
        """Close both connections."""
        self._w.close()
        self._r.close()

    # -- schema ------------------------------------------------------------------------
    def migrate(self) -> int:
        """Apply pending migrations; returns the schema version now in force."""
        with self.transaction(self._w):
            self.lock_schema()
            self.run(self._w, CREATE_VERSIONS)
            row = self.run(self._w, "SELECT MAX(version) FROM schema_migrations").fetchone()
            applied = int(row[0] or 0)
            for version, description, statements in pending(applied):
                for statement in statements:
                    self.run(self._w, statement)
                self.run(
                    self._w,
                    "INSERT INTO schema_migrations (version, description, applied_ms) "
                    "VALUES (?, ?, ?)",
                    (version, description, int(time.time() * 1000)),
                )
                applied = version
        return applied

    # -- writes (one writer thread) ----------------------------------------------------
    def ingest(self, items: Sequence[Accepted], now_ms: int) -> list[str]:
        """Store a batch in one transaction; for each item NEW, DUPLICATE (the same report
        again), CONFLICT (another report holds its session_id and seq_number) or AHEAD
        (its seq_number is too far ahead of the session's newest)."""
        outcomes: dict[tuple[str, int], str] = {}
        first: dict[tuple[str, int], Accepted] = {}
        with self.transaction(self._w):
            heads = self._heads(sorted({item.session_id for item in items}), now_ms)
            admitted: list[Accepted] = []
            for item in items:
                key = (item.session_id, item.seq_number)
                if key in first:
                    continue
                head = heads.get(item.session_id)
                if head is not None and item.seq_number > head + SEQ_WINDOW:
                    outcomes[key] = AHEAD
                    continue
                first[key] = item
                admitted.append(item)
                heads[item.session_id] = max(item.seq_number, head or 0)
            # Rows are written in key order: two collectors on one database then take
            # their row locks in the same order and never deadlock each other.
            admitted.sort(key=lambda item: (item.session_id, item.seq_number))
            new = self._insert(admitted, now_ms)
            fresh = [i for i in admitted if (i.session_id, i.seq_number) in new]
            self._rollups(fresh, now_ms)
            if fresh:
                self.run(
                    self._w,
                    "UPDATE totals SET value = value + ? WHERE name = 'reports'",
                    (len(fresh),),
                )
            for item in admitted:
                key = (item.session_id, item.seq_number)
                outcomes[key] = NEW if key in new else self._repeat(item)
            return [self._outcome(item, first, outcomes) for item in items]

    def _outcome(
        self,
        item: Accepted,
        first: dict[tuple[str, int], Accepted],
        outcomes: dict[tuple[str, int], str],
    ) -> str:
        key = (item.session_id, item.seq_number)
        kept = first.get(key)
        if kept is None or kept is item:
            return outcomes[key]
        if outcomes[key] == NEW:  # a repeat within the batch of the copy just stored
            return DUPLICATE if kept.body == item.body else CONFLICT
        return self._repeat(item)

    def _heads(self, session_ids: Sequence[str], now_ms: int) -> dict[str, int]:
        """The highest seq_number of each session that reported within RESTART_AFTER_MS.

        A session not here (never seen, deleted, expired, or silent that long) takes any
        seq_number as its start: a collector set up or emptied after a head started must
        still take its reports.
        """
        heads: dict[str, int] = {}
        for start in range(0, len(session_ids), _ROWS_PER_INSERT):
            chunk = session_ids[start : start + _ROWS_PER_INSERT]
            marks = ", ".join("?" for _ in chunk)
            rows = self.run(
                self._w,
                f"SELECT session_id, seq_number FROM sessions WHERE session_id IN ({marks}) "
                "AND last_ms >= ?",
                [*chunk, now_ms - RESTART_AFTER_MS],
            ).fetchall()
            heads.update((str(sid), int(seq)) for sid, seq in rows)
        return heads

    def _insert(self, admitted: Sequence[Accepted], now_ms: int) -> set[tuple[str, int]]:
        """Insert the reports not stored yet; the keys of those inserted."""
        new: set[tuple[str, int]] = set()
        for start in range(0, len(admitted), _ROWS_PER_INSERT):
            chunk = admitted[start : start + _ROWS_PER_INSERT]
            rows = ", ".join("(?, ?, ?, ?, ?)" for _ in chunk)
            params: list[Any] = []
            for item in chunk:
                params += [item.session_id, item.seq_number, now_ms, item.collect_ms]
                params.append(item.body.decode("utf-8"))
            cursor = self.run(self._w, _INSERT_REPORTS.format(rows=rows), params)
            new.update((str(sid), int(seq)) for sid, seq in cursor.fetchall())
        return new

    def _repeat(self, item: Accepted) -> str:
        """DUPLICATE when the stored report is this one (a retry), else CONFLICT."""
        row = self.run(
            self._w,
            "SELECT body FROM reports WHERE session_id = ? AND seq_number = ?",
            (item.session_id, item.seq_number),
        ).fetchone()
        return DUPLICATE if row is not None and str(row[0]).encode() == item.body else CONFLICT

    def _rollups(self, fresh: Sequence[Accepted], now_ms: int) -> None:
        sessions: dict[str, list[Any]] = {}
        facets: set[tuple[str, str, str]] = set()
        days: set[tuple[str, int, str]] = set()
        for item in fresh:
            # One row per session, as one upsert per report would leave it: the newest
            # report's facts, and the count of reports.
            row = sessions.get(item.session_id)
            if row is None or item.seq_number >= row[4]:
                count = 1 if row is None else row[3] + 1
                row = [item.session_id, now_ms, now_ms, count, item.seq_number, *item.facts]
                sessions[item.session_id] = row
            else:
                row[3] += 1
            facets.update((item.session_id, facet, v) for facet, v in item.facets)
            days.add((item.session_id, now_ms // DAY_MS, item.ray_version or "unknown"))
        rows = [sessions[sid] for sid in sorted(sessions)]
        self.insert_many(self._w, _UPSERT_SESSION, rows, _SESSION_TYPES)
        self.insert_many(self._w, _INSERT_FACET, sorted(facets), _FACET_TYPES)
        self.insert_many(self._w, _INSERT_DAY, sorted(days), _DAY_TYPES)

    def delete_sessions(self, session_ids: Sequence[str]) -> tuple[int, int]:
        """Delete every stored trace of these sessions; (sessions known, reports deleted)."""
        known = removed = 0
        with self.transaction(self._w):
            for sid in sorted(session_ids):  # the lock order ingest uses
                removed += max(
                    0,
                    self.run(self._w, "DELETE FROM reports WHERE session_id = ?", (sid,)).rowcount,
                )
                cursor = self.run(self._w, "DELETE FROM sessions WHERE session_id = ?", (sid,))
                known += 1 if cursor.rowcount > 0 else 0
                self.run(self._w, "DELETE FROM session_facets WHERE session_id = ?", (sid,))
                self.run(self._w, "DELETE FROM session_days WHERE session_id = ?", (sid,))
            self._count_removed(removed)
        self.scrub()
        return known, removed

    def expire(self, cutoff_ms: int) -> int:
        """Retention: drop reports received before `cutoff_ms`, and sessions with none left."""
        with self.transaction(self._w):
            removed = max(
                0,
                self.run(
                    self._w, "DELETE FROM reports WHERE received_ms < ?", (cutoff_ms,)
                ).rowcount,
            )
            gone = "SELECT session_id FROM sessions WHERE last_ms < ?"
            for table in ("session_facets", "session_days"):
                self.run(self._w, f"DELETE FROM {table} WHERE session_id IN ({gone})", (cutoff_ms,))
            self.run(self._w, "DELETE FROM sessions WHERE last_ms < ?", (cutoff_ms,))
            self.run(self._w, "DELETE FROM session_days WHERE day < ?", (cutoff_ms // DAY_MS,))
            # Long-lived sessions lost their oldest reports: recount only those.
            self.run(
                self._w,
                "UPDATE sessions SET first_ms = ?, reports = (SELECT COUNT(*) FROM reports "
                "WHERE reports.session_id = sessions.session_id) WHERE first_ms < ?",
                (cutoff_ms, cutoff_ms),
            )
            self._count_removed(removed)
        if removed:
            self.scrub()
        return removed

    def _count_removed(self, removed: int) -> None:
        if removed:
            self.run(
                self._w, "UPDATE totals SET value = value - ? WHERE name = 'reports'", (removed,)
            )

    # -- reads (any thread) ------------------------------------------------------------
    def read(self, work: Callable[[Callable[..., Cursor]], Any]) -> Any:
        """Run read-only queries on the read connection, one caller at a time."""
        with self._read_lock:
            try:
                with self.transaction(self._r):
                    return work(lambda text, params=(): self.run(self._r, text, params))
            except Exception:
                self.recover("read")
                raise

    def session_reports(self, session_id: str, limit: int = 1000) -> list[StoredReport]:
        """The newest `limit` stored reports of one session, newest first."""

        def query(q: Callable[..., Cursor]) -> list[StoredReport]:
            rows = q(
                "SELECT seq_number, received_ms, body FROM reports WHERE session_id = ? "
                "ORDER BY seq_number DESC LIMIT ?",
                (session_id, limit),
            ).fetchall()
            return [StoredReport(int(s), int(r), str(b)) for s, r, b in rows]

        result: list[StoredReport] = self.read(query)
        return result

    def counts(self) -> tuple[int, int]:
        """(reports stored, sessions stored)."""

        def query(q: Callable[..., Cursor]) -> tuple[int, int]:
            reports = q("SELECT value FROM totals WHERE name = 'reports'").fetchone()[0]
            sessions = q("SELECT COUNT(*) FROM sessions").fetchone()[0]
            return int(reports), int(sessions)

        result: tuple[int, int] = self.read(query)
        return result
