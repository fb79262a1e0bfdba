"""Two collectors on one PostgreSQL: they migrate a fresh database together without racing,
and take concurrent reports, for the same sessions, with exact counts afterwards."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.collector.harness import (
    CollectorProcess,
    PostgresServer,
    sample_report,
    start_collector,
)
from usagestatsd.collector.migrations import LATEST

pytestmark = pytest.mark.postgres
SESSIONS = 4
PER_SENDER = 20  # each session: two senders, one per collector, PER_SENDER reports each


def _database(server: PostgresServer) -> str:
    import psycopg

    name = "rep_" + uuid.uuid4().hex[:10]
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.dsn.rsplit("/", 1)[0] + "/" + name


def _query(dsn: str, text: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return conn.execute(text).fetchall()


def test_stores_migrating_at_the_same_instant_apply_each_step_once(
    postgres: PostgresServer,
) -> None:
    """Four stores released together on a fresh database: without a lock, concurrent
    CREATE TABLE fails in all but one (a duplicate catalog row) or a step is applied twice."""
    from usagestatsd.collector.store_postgres import PostgresStore

    dsn = _database(postgres)
    stores = [PostgresStore(dsn) for _ in range(4)]
    start = threading.Barrier(len(stores))

    def migrate(store: PostgresStore) -> int:
        start.wait()
        return store.migrate()

    try:
        with ThreadPoolExecutor(len(stores)) as pool:
            versions = list(pool.map(migrate, stores))
    finally:
        for store in stores:
            store.close()
    assert versions == [LATEST] * len(stores)
    assert _query(dsn, "SELECT version FROM schema_migrations") == [(LATEST,)]
    assert _query(dsn, "SELECT name, value FROM totals") == [("reports", 0)]


def _sender(c: CollectorProcess, sid: str, seqs: range, statuses: list[int]) -> Callable[[], None]:
    def send() -> None:
        for seq in seqs:
            statuses.append(c.post(sample_report(sid, seq, total_num_nodes=seq + 1)).status)

    return send


def test_two_collectors_started_together_take_concurrent_reports_exactly(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    dsn = _database(postgres)
    with ThreadPoolExecutor(2) as pool:
        pair = list(
            pool.map(
                lambda n: start_collector(tmp_path / f"state{n}", ["--database-url", dsn]),
                range(2),
            )
        )
    try:
        sids = [uuid.uuid4().hex for _ in range(SESSIONS)]
        statuses: list[int] = []
        # Each session's even seq_numbers go to one collector, its odd ones to the other,
        # from two senders at once: both write the same session rows concurrently.
        work = [
            _sender(pair[half], sid, range(half, 2 * PER_SENDER, 2), statuses)
            for sid in sids
            for half in (0, 1)
        ]
        threads = [threading.Thread(target=w) for w in work]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        # A retry landing on the other replica is a duplicate, not a second report.
        repeats = [pair[1].post(sample_report(sid, 0, total_num_nodes=1)) for sid in sids]
        assert [a.json()["duplicate"] for a in repeats] == [True] * SESSIONS
        exits = [c.stop() for c in pair]
    finally:
        for c in pair:
            if c.proc.poll() is None:
                c.stop()
    total = SESSIONS * 2 * PER_SENDER
    assert statuses == [200] * total
    assert exits == [0, 0]
    assert _query(dsn, "SELECT version FROM schema_migrations") == [(LATEST,)]
    assert _query(dsn, "SELECT COUNT(*) FROM reports") == [(total,)]
    assert _query(dsn, "SELECT value FROM totals WHERE name = 'reports'") == [(total,)]
    # Every session: all its reports counted, the newest one's facts (nodes = seq + 1).
    sessions = _query(dsn, "SELECT session_id, reports, seq_number, total_num_nodes FROM sessions")
    last = 2 * PER_SENDER - 1
    assert sorted(sessions) == sorted((sid, 2 * PER_SENDER, last, last + 1) for sid in sids)
    per_day = _query(dsn, "SELECT session_id, COUNT(*) FROM session_days GROUP BY session_id")
    assert all(days >= 1 for _, days in per_day) and len(per_day) == SESSIONS
    for c in pair:
        assert not [e for e in c.events() if e.get("level") == "error"], c.lines
