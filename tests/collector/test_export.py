"""The export for a data team, read from a real collector on 127.0.0.1: NDJSON and CSV,
streamed page by page, over a date range, with hostile stored values kept inert in CSV."""

from __future__ import annotations

import csv
import io
import json
import socket
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.collector.harness import (
    CollectorProcess,
    PostgresServer,
    running_collector,
    sample_report,
)
from usagestatsd.collector.export import CSV_HEADER, PAGE_ROWS

BULK_SESSIONS, BULK_SEQS = 40, 100  # 4,000 reports: eight pages of the stream
BULK_MS = 1_700_000_000_000  # 2023-11-14, before every other stored report
EDGE_SID = "ed" * 16
HOSTILE_SID = "ba" * 16
# Received times around the day 2026-01-02 (UTC), one report each, seq 0 to 4.
EDGES = (
    "2026-01-01T23:59:59.999",
    "2026-01-02T00:00:00.000",
    "2026-01-02T12:00:00.000",
    "2026-01-02T23:59:59.999",
    "2026-01-03T00:00:00.000",
)
HOSTILE = {
    "source": '=HYPERLINK("http://evil.example/?x","click")',
    "os": "+cmd|' /C calc'!A0",
    "cloud_provider": "@SUM(1+1)*cmd|' /C calc'!A0",
    "ray_version": "-2+3",
    "head_node_instance_type": "\tm5,large",
    "libc_version": 'glibc "2,36"\r\nnext line',
    "library_usages": ["a,b", 'q"z', "new\nline", "=1+1"],
}


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def _store(state: Path) -> None:
    """The stored reports: a bulk fleet, one session around a day's edges, and one report
    whose stored body holds hostile values (as a database written by anything might)."""
    from usagestatsd.collector.store_sqlite import SqliteStore
    from usagestatsd.collector.validate import Accepted, validate

    store = SqliteStore(state / "collector.sqlite3")
    store.migrate()

    def accepted(sid: str, seq: int) -> Accepted:
        result = validate(json.dumps(sample_report(sid, seq)).encode(), 1 << 16)
        assert isinstance(result, Accepted)
        return result

    for seq in range(BULK_SEQS):
        batch = [accepted(f"{n:04x}" + "b1" * 14, seq) for n in range(BULK_SESSIONS)]
        store.ingest(batch, BULK_MS + seq)
    for seq, when in enumerate(EDGES):
        store.ingest([accepted(EDGE_SID, seq)], _ms(when))
    store.close()
    body = json.dumps(sample_report(HOSTILE_SID, 0, **HOSTILE))
    with sqlite3.connect(state / "collector.sqlite3") as db:
        db.execute(
            "INSERT INTO reports (session_id, seq_number, received_ms, collect_ms, body) "
            "VALUES (?, 0, ?, 0, ?)",
            (HOSTILE_SID, _ms("2025-01-01T00:00:00"), body),
        )


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorProcess]:
    state = tmp_path_factory.mktemp("export") / "state"
    state.mkdir()
    _store(state)
    # Retention left at its default would expire the years-old reports stored here.
    with running_collector(state, ["--retention-days", "36500"]) as running:
        yield running


def _ndjson(collector: CollectorProcess, query: str = "") -> list[dict[str, object]]:
    answer = collector.get(f"/api/export.ndjson{query}")
    assert answer.status == 200, answer.body[:300]
    assert answer.headers["Content-Type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in answer.body.decode().splitlines()]


def _csv(collector: CollectorProcess, query: str = "") -> list[list[str]]:
    answer = collector.get(f"/api/export.csv{query}")
    assert answer.status == 200, answer.body[:300]
    assert answer.headers["Content-Type"].startswith("text/csv")
    assert 'filename="usagestatsd-reports.csv"' in answer.headers["Content-Disposition"]
    return list(csv.reader(io.StringIO(answer.body.decode(), newline="")))


BEFORE_NOW = "?to=2026-06-01"  # every report stored before the collector started
TOTAL = BULK_SESSIONS * BULK_SEQS + len(EDGES) + 1


def test_every_report_in_both_formats(collector: CollectorProcess) -> None:
    """Without a range: every stored report once, in receiving order, the same in both."""
    lines = _ndjson(collector, BEFORE_NOW)
    assert len(lines) == TOTAL
    keys = [(r["received_ms"], r["session_id"], r["seq_number"]) for r in lines]
    assert keys == sorted(keys) and len(set(keys)) == TOTAL
    first = lines[0]
    assert first["report"] == sample_report(str(first["session_id"]), 0)
    rows = _csv(collector, BEFORE_NOW)
    assert tuple(rows[0]) == CSV_HEADER
    assert len(rows) == TOTAL + 1
    assert [(int(r[0]), r[1], int(r[2])) for r in rows[1:]] == keys


@pytest.mark.parametrize(
    ("query", "seqs"),
    [
        ("?from=2026-01-02&to=2026-01-03", [1, 2, 3]),  # the day: midnight in, next one out
        ("?from=2026-01-02T00:00:00.001Z", [2, 3, 4]),
        ("?to=2026-01-02T00:00Z", [0]),
        ("?from=2026-01-02T12:00:00%2B00:00&to=2026-01-02T12:00:00.001Z", [2]),
        ("?from=2026-01-02T13:00%2B01:00&to=2026-01-03", [2, 3]),  # an offset is honoured
        ("?from=2026-01-03T00:00:00.001Z", []),
    ],
)
def test_range_edges(collector: CollectorProcess, query: str, seqs: list[int]) -> None:
    """`from` is included, `to` is not; a date is its midnight UTC."""
    edge = [r for r in _ndjson(collector, query) if r["session_id"] == EDGE_SID]
    assert [r["seq_number"] for r in edge] == seqs
    rows = [r for r in _csv(collector, query)[1:] if r[1] == EDGE_SID]
    assert [int(r[2]) for r in rows] == seqs


def test_range_counts(collector: CollectorProcess) -> None:
    """A range over the bulk reports holds exactly those."""
    assert len(_ndjson(collector, "?to=2024-01-01")) == BULK_SESSIONS * BULK_SEQS
    assert len(_csv(collector, "?from=2024-01-01&to=2026-06-01")) == 1 + len(EDGES) + 1


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("?from=yesterday", "from"),
        ("?to=2026-13-01", "to"),
        ("?from=2026-01-02T10:00", "from"),  # a time without its offset
        ("?from=2026-01-03&to=2026-01-02", "to"),
        ("?from=2026-01-02&to=2026-01-02", "to"),
        ("?from=2026-01-01&from=2026-01-02", "from"),
        ("?since=2026-01-01", "since"),
        ("?to=" + "9" * 300, "to"),
    ],
)
def test_bad_parameters(collector: CollectorProcess, query: str, parameter: str) -> None:
    """400 naming the parameter, in both formats, and a log event saying which."""
    before = len(collector.events("export.rejected"))
    for kind in ("ndjson", "csv"):
        answer = collector.get(f"/api/export.{kind}{query}")
        assert answer.status == 400
        assert answer.json()["parameter"] == parameter
        assert answer.json()["error"].startswith(f"{parameter}: ")
    # Each event is logged after its answer is sent: wait for both.
    events = collector.events("export.rejected", at_least=before + 2)
    assert [e["parameter"] for e in events[before:]] == [parameter, parameter]


def test_csv_keeps_hostile_values_inert(collector: CollectorProcess) -> None:
    """Commas, quotes and line breaks stay inside their cell; no cell starts a formula."""
    rows = _csv(collector, "?from=2025-01-01&to=2025-01-02")
    assert len(rows) == 2 and rows[1][1] == HOSTILE_SID
    cell = dict(zip(rows[0], rows[1], strict=True))
    for name in ("source", "os", "cloud_provider", "ray_version", "head_node_instance_type"):
        assert cell[name] == "'" + str(HOSTILE[name]), name
    assert cell["libc_version"] == HOSTILE["libc_version"]  # a quote inside is not a formula
    assert json.loads(cell["library_usages"]) == HOSTILE["library_usages"]
    for row in rows:
        for value in row:
            assert not value.startswith(("=", "+", "-", "@", "\t", "\r")), value
    lines = _ndjson(collector, "?from=2025-01-01&to=2025-01-02")
    assert lines[0]["report"] == sample_report(HOSTILE_SID, 0, **HOSTILE)


def test_hostile_values_sent_over_http(collector: CollectorProcess) -> None:
    """What the privacy guard lets through from a sender (a comma, a leading '-' or '=') is
    exported exactly, and inert in CSV."""
    tags = {"team": "a,b", "cost": "=1+2"}
    report = sample_report("cd" * 16, 0, source="-1", extra_usage_tags=tags)
    assert collector.post(report).status == 200
    rows = _csv(collector, "?from=2026-06-01")
    row = dict(zip(rows[0], next(r for r in rows if r[1] == "cd" * 16), strict=True))
    assert row["source"] == "'-1"
    assert json.loads(row["extra_usage_tags"]) == tags
    sent = [r for r in _ndjson(collector, "?from=2026-06-01") if r["session_id"] == "cd" * 16]
    assert sent[0]["report"] == report


def _raw_get(url: str) -> tuple[str, list[bytes]]:
    """One GET over a plain socket: the answer's head, and its body's chunks as sent."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
        request = f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: x\r\n"
        sock.sendall(request.encode() + b"Connection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(1 << 16):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    chunks = []
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        chunks.append(rest[:size])
        rest = rest[size + 2 :]
    return head.decode(), chunks


def test_large_export_is_streamed(collector: CollectorProcess) -> None:
    """Thousands of reports arrive as a chunked answer, a page of reports per chunk or so,
    never one body built whole: every report is there, each line whole, once."""
    head, chunks = _raw_get(collector.url + "api/export.ndjson?to=2024-01-01")
    assert " 200 " in head.splitlines()[0]
    assert "transfer-encoding: chunked" in head.lower()
    assert "content-length" not in head.lower()
    expected = BULK_SESSIONS * BULK_SEQS
    assert len(chunks) >= expected // PAGE_ROWS
    body = b"".join(chunks).decode()
    lines = body.splitlines()
    assert len(lines) == expected and body.endswith("\n")
    seen = {(r["session_id"], r["seq_number"]) for r in map(json.loads, lines)}
    assert len(seen) == expected
    head, chunks = _raw_get(collector.url + "api/export.csv?to=2024-01-01")
    assert "transfer-encoding: chunked" in head.lower()
    assert len(chunks) >= expected // PAGE_ROWS
    rows = list(csv.reader(io.StringIO(b"".join(chunks).decode(), newline="")))
    assert len(rows) == expected + 1


@pytest.mark.postgres
def test_export_on_postgres(postgres: PostgresServer, tmp_path: Path) -> None:
    """The same paging and range on PostgreSQL: three pages of reports sharing received
    times, each exported once and in order."""
    import psycopg

    from usagestatsd.collector.store_postgres import PostgresStore
    from usagestatsd.collector.validate import Accepted, validate

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    dsn = postgres.dsn.rsplit("/", 1)[0] + "/" + name
    store = PostgresStore(dsn)
    store.migrate()
    sessions, seqs = 120, 10  # 1,200 reports, 120 of them at each received time
    for seq in range(seqs):
        batch = []
        for n in range(sessions):
            body = json.dumps(sample_report(f"{n:04x}" + "c3" * 14, seq)).encode()
            result = validate(body, 1 << 16)
            assert isinstance(result, Accepted)
            batch.append(result)
        store.ingest(batch, _ms("2026-02-01T00:00:00") + seq)
    store.close()
    args = ["--database-url", dsn, "--retention-days", "36500"]
    with running_collector(tmp_path / "state", args) as running:
        lines = _ndjson(running)
        keys = [(r["received_ms"], r["session_id"], r["seq_number"]) for r in lines]
        assert len(keys) == sessions * seqs == len(set(keys)) and keys == sorted(keys)
        ranged = _csv(running, "?from=2026-02-01T00:00:00.002Z&to=2026-02-01T00:00:00.005Z")
        assert sorted({int(r[2]) for r in ranged[1:]}) == [2, 3, 4]
        assert len(ranged) == 1 + 3 * sessions
