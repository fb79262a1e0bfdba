"""One schema for SQLite and PostgreSQL, in numbered steps applied in order, once each.

Only portable SQL: TEXT, BIGINT, DOUBLE PRECISION, composite primary keys, plain indexes.
`schema_migrations` records each applied step; a database written by a newer collector
(a higher version than this code knows) is refused rather than misread.
"""

from __future__ import annotations

from collections.abc import Sequence

# reports: every stored report, exactly as kept (after the privacy guard).
# sessions, session_facets, session_days: rollups maintained at ingest, so the fleet page
# never scans reports. totals: counters the page shows without COUNT(*) over reports.
MIGRATIONS: Sequence[tuple[int, str, Sequence[str]]] = (
    (
        1,
        "reports, per-session rollups, totals",
        (
            """CREATE TABLE reports (
                session_id TEXT NOT NULL,
                seq_number BIGINT NOT NULL,
                received_ms BIGINT NOT NULL,
                collect_ms BIGINT NOT NULL,
                body TEXT NOT NULL,
                PRIMARY KEY (session_id, seq_number))""",
            "CREATE INDEX reports_received ON reports (received_ms)",
            """CREATE TABLE sessions (
                session_id TEXT PRIMARY KEY,
                first_ms BIGINT NOT NULL,
                last_ms BIGINT NOT NULL,
                reports BIGINT NOT NULL,
                seq_number BIGINT NOT NULL,
                ray_version TEXT,
                python_version TEXT,
                os TEXT,
                source TEXT,
                cloud_provider TEXT,
                head_node_instance_type TEXT,
                total_num_nodes BIGINT,
                total_num_cpus BIGINT,
                total_num_gpus BIGINT,
                total_memory_gb DOUBLE PRECISION)""",
            "CREATE INDEX sessions_last ON sessions (last_ms)",
            """CREATE TABLE session_facets (
                session_id TEXT NOT NULL,
                facet TEXT NOT NULL,
                value TEXT NOT NULL,
                PRIMARY KEY (session_id, facet, value))""",
            """CREATE TABLE session_days (
                session_id TEXT NOT NULL,
                day BIGINT NOT NULL,
                ray_version TEXT NOT NULL,
                PRIMARY KEY (session_id, day))""",
            "CREATE INDEX session_days_day ON session_days (day)",
            "CREATE TABLE totals (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
            "INSERT INTO totals (name, value) VALUES ('reports', 0)",
        ),
    ),
)

LATEST = MIGRATIONS[-1][0]
CREATE_VERSIONS = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    "version BIGINT PRIMARY KEY, description TEXT NOT NULL, applied_ms BIGINT NOT NULL)"
)


class SchemaTooNew(Exception):
    """The database was migrated by a newer collector than this one."""


def pending(applied: int) -> list[tuple[int, str, Sequence[str]]]:
    """The steps after `applied`, in order; refuses a database newer than this code."""
    if applied > LATEST:
        raise SchemaTooNew(
            f"database schema version {applied} is newer than this collector's {LATEST}"
        )
    return [step for step in MIGRATIONS if step[0] > applied]
