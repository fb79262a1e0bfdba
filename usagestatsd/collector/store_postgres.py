"""PostgreSQL through psycopg 3 (Debian bookworm: python3-psycopg 3.1), for larger fleets."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import structlog

from usagestatsd.collector.store import SqlStore

log = structlog.get_logger()
# The advisory lock every collector takes to migrate (any constant both agree on: the
# lock space is the database's own; this one spells "usagestatsd").
MIGRATION_LOCK = 0x75736167_65737461


def _as(kind: str, value: Any) -> Any:
    # An array holds one type: a whole number in a DOUBLE PRECISION column is sent as one.
    return float(value) if kind == "DOUBLE PRECISION" and value is not None else value


class DriverMissing(Exception):
    """psycopg is not installed."""


def _connect(dsn: str) -> Any:
    try:
        import psycopg
    except ImportError as exc:  # an optional extra: say how to get it
        raise DriverMissing(
            "PostgreSQL needs psycopg 3: apt-get install python3-psycopg, "
            "or pip install 'usagestatsd[postgres]'"
        ) from exc
    # application_name says who holds the connection in pg_stat_activity; nothing else.
    return psycopg.connect(dsn, autocommit=True, application_name="usagestatsd-collector")


class PostgresStore(SqlStore):
    """The backend used when database_url is a postgresql:// DSN."""

    backend = "postgresql"

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        super().__init__(_connect(dsn), _connect(dsn))

    def recover(self, which: str) -> None:
        """A restarted or unreachable server breaks the connection: open a new one (once;
        if that fails too, the next failed statement tries again)."""
        conn = self._w if which == "write" else self._r
        if not (conn.closed or conn.broken):
            return
        with contextlib.suppress(Exception):
            conn.close()
        try:
            fresh = _connect(self._dsn)
        except Exception as exc:
            log.warning("store.reconnect_failed", error=type(exc).__name__)
            return
        log.info("store.reconnected", connection=which)
        if which == "write":
            self._w = fresh
        else:
            self._r = fresh

    def lock_schema(self) -> None:
        """Two collectors started together on a fresh database would both create the
        tables (one fails on a duplicate type) or both apply a step: the second waits here
        until the first commits, then finds the schema current. The transaction-scoped lock
        is released by the commit or rollback, even if the process dies."""
        self._w.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))

    def scrub(self) -> None:
        """VACUUM the tables a deletion touched: their dead tuples (the deleted rows, still
        in the table's pages until vacuumed) are pruned now rather than whenever autovacuum
        gets to them. What VACUUM does not do is said in docs/collector.md: it frees the
        space without zeroing it, and the server's own WAL keeps its copies until recycled."""
        for table in ("reports", "sessions", "session_facets", "session_days"):
            self._w.execute(f"VACUUM {table}")

    def insert_many(
        self, conn: Any, text: str, rows: Sequence[Sequence[Any]], types: Sequence[str]
    ) -> None:
        """All rows as one statement: `VALUES (...)` becomes `SELECT * FROM unnest(...)` of
        one array per column, in the rows' order. psycopg's pipelined executemany spends
        its time in Python per row; this is one statement whose text never changes, so it
        is parsed and prepared once."""
        if not rows:
            return
        head, _, rest = text.partition(" VALUES (")
        tail = rest.partition(")")[2]
        arrays = ", ".join(f"%s::{kind}[]" for kind in types)
        columns = [
            [_as(kind, value) for value in column]
            for kind, column in zip(types, zip(*rows, strict=True), strict=True)
        ]
        conn.execute(f"{head} SELECT * FROM unnest({arrays}){tail}", columns)

    def sql(self, text: str) -> str:
        """psycopg's placeholders are %s (the shared SQL never holds a literal ? or %)."""
        return text.replace("?", "%s")

    @contextlib.contextmanager
    def transaction(self, conn: Any) -> Iterator[None]:
        """One transaction; psycopg commits on success and rolls back on an exception."""
        with conn.transaction():
            yield
