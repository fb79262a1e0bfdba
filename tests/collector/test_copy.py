"""`usagestatsd-collector copy`: a SQLite store carried into a real PostgreSQL, whole,
once, and never over someone else's data unless told."""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.collector.harness import PostgresServer, populate, run_collector, sample_report
from usagestatsd.collector.validate import Accepted, validate

pytestmark = pytest.mark.postgres
TABLES = {
    "reports": "session_id, seq_number, received_ms, collect_ms, body",
    "sessions": "*",
    "session_facets": "*",
    "session_days": "*",
    "totals": "*",
}


def _database(server: PostgresServer) -> str:
    import psycopg

    name = "copy_" + uuid.uuid4().hex[:10]
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.dsn.rsplit("/", 1)[0] + "/" + name


def _dsn_file(tmp_path: Path, dsn: str) -> Path:
    path = tmp_path / "target.dsn"
    path.write_text(dsn + "\n")
    path.chmod(0o600)
    return path


def _rows_sqlite(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(db)
    try:
        return {
            t: sorted(conn.execute(f"SELECT {c} FROM {t}").fetchall()) for t, c in TABLES.items()
        }
    finally:
        conn.close()


def _rows_postgres(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return {
            t: sorted(conn.execute(f"SELECT {c} FROM {t}").fetchall()) for t, c in TABLES.items()
        }


def _copy(db: Path, dsn_file: Path, *more: str) -> tuple[int, str]:
    args = ["copy", "--config", os.devnull, "--from", str(db), "--to-file", str(dsn_file), *more]
    result = run_collector(args, timeout=120)
    return result.returncode, result.stdout + result.stderr


def test_copy_carries_every_table_and_running_it_again_copies_nothing(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    ids = populate(tmp_path / "state", sessions=30, days=6)
    db = tmp_path / "state" / "collector.sqlite3"
    dsn = _database(postgres)
    dsn_file = _dsn_file(tmp_path, dsn)
    source = _rows_sqlite(db)
    stored = len(source["reports"])
    assert stored > len(ids)

    code, output = _copy(db, dsn_file)
    assert code == 0, output
    assert f"reports: {stored} copied, 0 already there" in output
    assert f"sessions: {len(ids)} copied, 0 already there" in output
    assert _rows_postgres(dsn) == source

    code, output = _copy(db, dsn_file)
    assert code == 0, output
    assert f"reports: 0 copied, {stored} already there" in output
    assert f"sessions: 0 copied, {len(ids)} already there" in output
    assert _rows_postgres(dsn) == source  # totals and per-session counts not doubled


def _store_directly(dsn: str, session_id: str) -> None:
    from usagestatsd.collector.store_postgres import PostgresStore

    store = PostgresStore(dsn)
    try:
        store.migrate()
        report = validate(json.dumps(sample_report(session_id, 0)).encode(), 1 << 16)
        assert isinstance(report, Accepted)
        store.ingest([report], 1_795_900_000_000)
    finally:
        store.close()


def test_copy_refuses_a_target_holding_other_data_unless_merging(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    populate(tmp_path / "state", sessions=8, days=3)
    db = tmp_path / "state" / "collector.sqlite3"
    dsn = _database(postgres)
    dsn_file = _dsn_file(tmp_path, dsn)
    _store_directly(dsn, "ee" * 16)

    code, output = _copy(db, dsn_file)
    assert code == 1
    assert "already holds other data" in output and "--merge" in output
    assert len(_rows_postgres(dsn)["reports"]) == 1  # nothing copied

    code, output = _copy(db, dsn_file, "--merge")
    assert code == 0, output
    after = _rows_postgres(dsn)
    source = _rows_sqlite(db)
    assert len(after["reports"]) == len(source["reports"]) + 1
    assert after["totals"] == [("reports", len(source["reports"]) + 1)]
    per_session = {row[0]: row[3] for row in after["sessions"]}
    assert per_session["ee" * 16] == 1
    assert {row[0]: row[3] for row in source["sessions"]}.items() <= per_session.items()


def test_copy_refuses_a_password_on_the_command_line(tmp_path: Path) -> None:
    """`ps` would show it: exit 78, the password never echoed, nothing connected to."""
    populate(tmp_path / "state", sessions=1, days=1)
    secret = "pw-copy-hunter2"
    result = run_collector(
        [
            "copy",
            "--config",
            os.devnull,
            "--from",
            str(tmp_path / "state" / "collector.sqlite3"),
            "--to",
            f"postgresql://collector:{secret}@127.0.0.1:1/usage",
        ]
    )
    assert result.returncode == 78
    assert "--to-file" in result.stderr
    assert secret not in result.stdout + result.stderr
