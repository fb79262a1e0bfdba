"""PostgreSQL through psycopg 3 (Debian bookworm: python3-psycopg 3.1), for larger fleets."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from usagestatsd.collector.store import SqlStore


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
        super().__init__(_connect(dsn), _connect(dsn))

    def sql(self, text: str) -> str:
        """psycopg's placeholders are %s (the shared SQL never holds a literal ? or %)."""
        return text.replace("?", "%s")

    @contextlib.contextmanager
    def transaction(self, conn: Any) -> Iterator[None]:
        """One transaction; psycopg commits on success and rolls back on an exception."""
        with conn.transaction():
            yield
