"""`usagestatsd-collector copy`: carry a SQLite store's data into PostgreSQL.

Every table is copied row by row with `ON CONFLICT DO NOTHING`, in chunks of one
transaction each: a copy cut short is finished by running it again, and running it twice
copies nothing twice. The source is read in one read transaction (a consistent snapshot,
even while a collector still writes to it) and never written. The rollup counters
(`sessions.reports`, `totals`) are recounted from the copied reports at the end.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from usagestatsd.collector.migrations import LATEST, SchemaTooNew
from usagestatsd.collector.store import SESSION_FACTS

CHUNK = 1000
_SESSION_COLUMNS = ("session_id", "first_ms", "last_ms", "reports", "seq_number", *SESSION_FACTS)
# A session already in the target (a merge, or a copy run again) keeps the wider seen-range
# and the facts of whichever side holds the newer report; its count is recounted at the end.
_MERGE_SESSION = (
    "first_ms = LEAST(sessions.first_ms, excluded.first_ms), "
    "last_ms = GREATEST(sessions.last_ms, excluded.last_ms), "
    + ", ".join(
        f"{name} = CASE WHEN excluded.seq_number > sessions.seq_number "
        f"THEN excluded.{name} ELSE sessions.{name} END"
        for name in (*SESSION_FACTS, "seq_number")
    )
)
# (table, its columns, what to do with a row already there)
TABLES: Sequence[tuple[str, Sequence[str], str]] = (
    ("reports", ("session_id", "seq_number", "received_ms", "collect_ms", "body"), ""),
    ("sessions", _SESSION_COLUMNS, _MERGE_SESSION),
    ("session_facets", ("session_id", "facet", "value"), ""),
    ("session_days", ("session_id", "day", "ray_version"), ""),
)
_KEYS = {"reports": "session_id, seq_number", "sessions": "session_id"}


class CopyRefused(Exception):
    """The copy cannot or should not go ahead; the text says why and what to do."""


@dataclass
class CopyCounts:
    """Per table: rows the copy added, and rows the target already held."""

    copied: dict[str, int] = field(default_factory=dict)
    present: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """One line per table, as `copy` prints them."""
        return [
            f"{table}: {self.copied[table]} copied, {self.present[table]} already there"
            for table in self.copied
        ]


def open_source(path: Path) -> sqlite3.Connection:
    """The SQLite store, read-only, checked to be a collector's database this code reads."""
    if not path.is_file():
        raise CopyRefused(f"{path}: no such SQLite file")
    conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, isolation_level=None)
    try:
        row = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise CopyRefused(f"{path}: not a usagestatsd-collector database ({exc})") from None
    if int(row[0] or 0) > LATEST:
        conn.close()
        raise SchemaTooNew(f"{path} has schema version {row[0]}, newer than this copy's {LATEST}")
    if int(row[0] or 0) < LATEST:
        conn.close()
        raise CopyRefused(f"{path}: schema version {row[0]}; start a collector on it once first")
    return conn


def _chunks(source: sqlite3.Connection, table: str, columns: Sequence[str]) -> Iterator[list[Any]]:
    order = _KEYS.get(table, ", ".join(columns))
    cursor = source.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}")
    while rows := cursor.fetchmany(CHUNK):
        yield rows


def _foreign_rows(source: sqlite3.Connection, target: Any) -> list[str]:
    """Tables in which the target holds a row (by key) the source does not."""
    found = []
    for table, key in _KEYS.items():
        names = key.split(", ")
        where = " AND ".join(f"{n} = ?" for n in names)
        with target.transaction(), target.cursor(name=f"keys_{table}") as keys:
            keys.execute(f"SELECT {key} FROM {table}")
            while rows := keys.fetchmany(CHUNK):
                if any(
                    source.execute(f"SELECT 1 FROM {table} WHERE {where}", row).fetchone() is None
                    for row in rows
                ):
                    found.append(table)
                    break
    return found


def _copy_table(
    source: sqlite3.Connection, target: Any, table: str, columns: Sequence[str], merge: str
) -> tuple[int, int]:
    on_conflict = (
        f"ON CONFLICT ({_KEYS[table]}) DO UPDATE SET {merge} RETURNING (xmax = 0)"
        if merge
        else "ON CONFLICT DO NOTHING RETURNING TRUE"
    )
    copied = seen = 0
    row_marks = "(" + ", ".join("%s" for _ in columns) + ")"
    for rows in _chunks(source, table, columns):
        statement = (
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
            + ", ".join(row_marks for _ in rows)
            + f" {on_conflict}"
        )
        with target.transaction():
            inserted = target.execute(statement, [v for row in rows for v in row]).fetchall()
        copied += sum(1 for (fresh,) in inserted if fresh)
        seen += len(rows)
    return copied, seen - copied


def _recount(target: Any) -> None:
    """The counters the page shows, from the rows now in the target."""
    with target.transaction():
        target.execute(
            "UPDATE sessions SET reports = (SELECT COUNT(*) FROM reports "
            "WHERE reports.session_id = sessions.session_id)"
        )
        target.execute("UPDATE totals SET value = (SELECT COUNT(*) FROM reports)")


def copy_store(source: sqlite3.Connection, target: Any, merge: bool) -> CopyCounts:
    """Copy every table of `source` into `target` (a migrated psycopg connection in
    autocommit mode). Unless `merge`, refuses a target holding rows the source has not."""
    counts = CopyCounts()
    source.execute("BEGIN")  # one snapshot for the check and every table
    try:
        foreign = [] if merge else _foreign_rows(source, target)
        if foreign:
            raise CopyRefused(
                f"the target already holds other data (in {', '.join(foreign)}): "
                "copy into an empty database, or pass --merge to add to it"
            )
        for table, columns, on_conflict in TABLES:
            copied, present = _copy_table(source, target, table, columns, on_conflict)
            counts.copied[table], counts.present[table] = copied, present
        _recount(target)
    finally:
        source.execute("ROLLBACK")
    return counts
