"""Both backends, one behaviour: rollups, aggregates, deletion, retention, migrations."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.collector.harness import PostgresServer, running_collector, sample_report
from usagestatsd.collector.fleet import fleet
from usagestatsd.collector.migrations import LATEST, SchemaTooNew
from usagestatsd.collector.store import (
    AHEAD,
    CONFLICT,
    DAY_MS,
    DUPLICATE,
    NEW,
    RESTART_AFTER_MS,
    SEQ_WINDOW,
    SqlStore,
)
from usagestatsd.collector.store_sqlite import SqliteStore
from usagestatsd.collector.validate import Accepted, validate

NOW = 1_795_900_000_000


def accepted(sid: str, seq: int, **changes: object) -> Accepted:
    """A report through the same validation the collector runs."""
    result = validate(json.dumps(sample_report(sid, seq, **changes)).encode(), 1 << 16)
    assert isinstance(result, Accepted), result
    return result


def _fresh_database(server: PostgresServer) -> str:
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.dsn.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    """A migrated, empty store of each backend."""
    opened: SqlStore
    if request.param == "sqlite":
        opened = SqliteStore(tmp_path / "c.sqlite3")
    else:
        from usagestatsd.collector.store_postgres import PostgresStore

        opened = PostgresStore(_fresh_database(request.getfixturevalue("postgres")))
    assert opened.migrate() == LATEST
    yield opened
    opened.close()


def test_ingest_is_idempotent_and_rolls_up(store: SqlStore) -> None:
    """Repeats in one batch and across batches are stored once; rollups follow the newest."""
    a, b = "aa" * 16, "bb" * 16
    batch = [
        accepted(a, 0, library_usages=["train"], total_num_nodes=1),
        accepted(a, 0, library_usages=["train"], total_num_nodes=1),
        accepted(a, 2, library_usages=["serve"], total_num_nodes=8, total_num_gpus=4),
        accepted(
            b,
            0,
            ray_version="2.9.3",
            cloud_provider="aws",
            head_node_instance_type="m5.xlarge",
            worker_node_instance_types=["g5.2xlarge"],
        ),
    ]
    assert store.ingest(batch, NOW) == [NEW, DUPLICATE, NEW, NEW]
    assert store.ingest([accepted(a, 1, total_num_nodes=2), batch[0]], NOW + 1) == [NEW, DUPLICATE]
    assert store.counts() == (4, 2)
    data = fleet(store, NOW + 2)
    assert data["clusters"] == {"stored": 2, "seen_24h": 2, "seen_7d": 2}
    a_row = next(s for s in data["recent_sessions"] if s["session_id"] == a)
    assert (a_row["reports"], a_row["nodes"], a_row["gpus"]) == (3, 8, 4)  # seq 2 is newest
    assert {r["name"]: r["share"] for r in data["libraries"]} == {"serve": 0.5, "train": 0.5}
    assert {r["name"] for r in data["instance_types"]} == {"m5.xlarge", "g5.2xlarge"}
    assert {r["name"]: r["clusters"] for r in data["clouds"]} == {"aws": 1, "unknown": 1}
    nodes = {r["label"]: r["clusters"] for r in data["sizes"]["nodes"]}
    assert nodes["5-16"] == 1 and nodes["1"] == 1
    today = data["ray_versions_by_day"][-1]
    assert today["day_ms"] == NOW // DAY_MS * DAY_MS
    assert today["versions"] == {"2.60.0": 1, "2.9.3": 1}
    assert [r.seq_number for r in store.session_reports(a)] == [2, 1, 0]


def test_delete_and_retention(store: SqlStore) -> None:
    """Deletion removes every row of a session; retention drops old reports and sessions."""
    a, b, c = "aa" * 16, "bb" * 16, "cc" * 16
    store.ingest([accepted(a, 0), accepted(b, 0)], NOW - 40 * DAY_MS)
    store.ingest([accepted(b, 1), accepted(c, 0)], NOW)
    assert store.delete_sessions([c, "dd" * 16]) == (1, 1)
    assert store.delete_sessions([c]) == (0, 0)
    assert store.expire(NOW - 30 * DAY_MS) == 2
    data = fleet(store, NOW)
    assert [s["session_id"] for s in data["recent_sessions"]] == [b]
    assert data["recent_sessions"][0]["reports"] == 1
    assert store.counts() == (1, 1)
    assert [r.seq_number for r in store.session_reports(b)] == [1]
    assert store.session_reports(a) == []


def test_migrations_apply_once_and_refuse_newer(store: SqlStore) -> None:
    """A second migrate is a no-op; a database from a newer collector is refused."""
    assert store.migrate() == LATEST
    store.read(lambda q: None)
    with store.transaction(store._w):
        store.run(store._w, "INSERT INTO schema_migrations VALUES (?, ?, ?)", (LATEST + 1, "x", 0))
    with pytest.raises(SchemaTooNew):
        store.migrate()


@pytest.mark.postgres
def test_collector_process_on_postgres(postgres: PostgresServer, tmp_path: Path) -> None:
    """The real collector with a DSN: ingest, duplicate, page data, deletion."""
    dsn = _fresh_database(postgres)
    sid = "ab" * 16
    deletion = {"USAGESTATSD_COLLECTOR_DELETION_TOKENS": "deletion-token-0123456789"}
    with running_collector(tmp_path / "state", ["--database-url", dsn], env=deletion) as c:
        listening = c.events("collector.listening", at_least=1)[0]
        assert listening["backend"] == "postgresql"
        assert c.post(sample_report(sid, 0)).json()["duplicate"] is False
        assert c.post(sample_report(sid, 0)).json()["duplicate"] is True
        assert c.get("/api/fleet").json()["clusters"]["seen_24h"] == 1
        assert "Ray fleet usage" in c.get("/").body.decode()
        body = {"protocol": "usagestatsd-deletion/1", "session_ids": [sid]}
        auth = {"Authorization": "Bearer deletion-token-0123456789"}
        assert c.post(body, "delete", auth).status == 200
        assert c.get(f"/api/sessions/{sid}").status == 404
        c.stop()
        logs = "\n".join(c.lines)
    assert not (tmp_path / "state" / "collector.sqlite3").exists()
    assert dsn not in logs


@pytest.mark.postgres
def test_collector_survives_a_postgres_restart(postgres: PostgresServer, tmp_path: Path) -> None:
    """The server restarts: at most a 503 (Retry-After) for the batch that hit it, then 200s."""
    dsn = _fresh_database(postgres)
    deletion = {"USAGESTATSD_COLLECTOR_DELETION_TOKENS": "deletion-token-0123456789"}
    with running_collector(tmp_path / "state", ["--database-url", dsn], env=deletion) as c:
        assert c.post(sample_report("ab" * 16, 0)).status == 200
        postgres.restart()
        answers = [c.post(sample_report("ab" * 16, seq)) for seq in range(1, 4)]
        assert [a.status for a in answers[1:]] == [200, 200]
        assert answers[0].status in (200, 503)
        if answers[0].status == 503:
            assert answers[0].headers["Retry-After"].isdigit()
        assert c.get("/api/fleet").status in (200, 500)  # the reader reconnects on failure
        assert c.get("/api/fleet").json()["reports_stored"] >= 3
        assert c.events("store.reconnected", at_least=1)


def test_retention_setting_expires_old_reports_at_start(tmp_path: Path) -> None:
    """--retention-days 1: a report received two days ago is gone once the collector runs."""
    state = tmp_path / "state"
    store = SqliteStore(state / "collector.sqlite3")
    store.migrate()
    now = int(time.time() * 1000)
    store.ingest([accepted("aa" * 16, 0)], now - 2 * DAY_MS)
    store.ingest([accepted("bb" * 16, 0)], now)
    store.close()
    with running_collector(state, ["--retention-days", "1"]) as c:
        expired = c.events("retention.expired", at_least=1)
        assert expired[0]["reports"] == 1 and expired[0]["retention_days"] == 1
        assert c.get(f"/api/sessions/{'aa' * 16}").status == 404
        assert c.get("/api/fleet").json()["reports_stored"] == 1
        assert "reports_expired_total 1" in c.get("/metrics").body.decode()


@pytest.mark.postgres
def test_postgres_deletion_leaves_no_tuple_holding_the_session(postgres: PostgresServer) -> None:
    """What docs/collector.md promises for PostgreSQL: once deletion returns, no tuple of the
    collector's tables (dead ones included, read page by page with pageinspect) holds the id."""
    import psycopg

    from usagestatsd.collector.store_postgres import PostgresStore

    dsn = _fresh_database(postgres)
    store = PostgresStore(dsn)
    store.migrate()
    sid, kept = "d1" * 16, "e2" * 16
    try:
        store.ingest([accepted(sid, n) for n in range(20)] + [accepted(kept, 0)], NOW)
        assert store.delete_sessions([sid]) == (1, 20)
    finally:
        store.close()
    tables = ("reports", "sessions", "session_facets", "session_days")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
        held: dict[str, int] = {}
        for table in tables:
            pages = conn.execute(f"SELECT pg_relation_size('{table}') / 8192").fetchone()
            assert pages is not None
            rows = conn.execute(
                "SELECT t_data FROM generate_series(0, %s - 1) AS page, "
                "LATERAL heap_page_items(get_raw_page(%s, page::int)) WHERE t_data IS NOT NULL",
                (int(pages[0]), table),
            ).fetchall()
            held[table] = sum(1 for (data,) in rows if sid.encode() in bytes(data))
            if table == "reports":
                assert any(kept.encode() in bytes(data) for (data,) in rows)
    assert held == dict.fromkeys(tables, 0)


def test_seq_numbers_far_ahead_and_conflicting_repeats_are_refused(store: SqlStore) -> None:
    """A known session takes seq_numbers up to SEQ_WINDOW past its newest; a different
    report under a stored key is a conflict, not a repeat; a session silent for
    RESTART_AFTER_MS (or unknown) starts at any seq_number."""
    a, b = "aa" * 16, "bb" * 16
    assert store.ingest([accepted(a, 5000), accepted(b, 0)], NOW) == [NEW, NEW]
    far, near = accepted(a, 5000 + SEQ_WINDOW + 1), accepted(a, 5000 + SEQ_WINDOW)
    assert store.ingest([far, accepted(b, 2**53, total_num_nodes=999)], NOW) == [AHEAD, AHEAD]
    forged = accepted(a, 5000, total_num_nodes=999)
    assert store.ingest([near, forged, accepted(a, 5000)], NOW) == [NEW, CONFLICT, DUPLICATE]
    assert store.ingest([accepted(b, 1), accepted(b, 1, total_num_nodes=9)], NOW) == [
        NEW,
        CONFLICT,
    ]
    assert [r.seq_number for r in store.session_reports(b)] == [1, 0]
    later = NOW + RESTART_AFTER_MS + 1
    assert store.ingest([accepted(b, 90_000)], later) == [NEW]
