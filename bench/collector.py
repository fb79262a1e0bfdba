"""`make bench-collector`: the collector's figures on this machine, SQLite and PostgreSQL.

    .venv/bin/python bench/collector.py                 # full run: 1,000,000 stored reports
    .venv/bin/python bench/collector.py --reports 100000 --seconds 5   # quicker

Measures, with only 127.0.0.1: sustained ingest with 100 concurrent senders (reports/s,
p50/p99 latency) through the real `usagestatsd-collector serve` process; its RSS idle and
under load; then, with N stored reports (10,000 sessions, one report per session-hour over
30 days), the fleet page render time (GET / end to end), the deletion of one session
(POST /delete end to end), and the bytes stored per report. The load generator is a
separate process (bench/collector_load.py) and shares the 2 cores with the collector.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))

from tests.collector.harness import (  # noqa: E402
    CollectorProcess,
    PostgresServer,
    http,
    running_collector,
    sample_report,
    start_postgres,
)
from usagestatsd.collector.store import DAY_MS, SqlStore  # noqa: E402
from usagestatsd.collector.validate import SESSION_FACTS, Accepted, validate  # noqa: E402

SESSIONS = 10_000
DELETION_VARIABLE, DELETION_TOKEN = (
    "USAGESTATSD_COLLECTOR_DELETION_TOKENS",
    "bench-deletion-0123456789",
)
HOUR_MS = 3_600_000


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(c: CollectorProcess, seconds: float, senders: int = 100) -> dict[str, Any]:
    """Run the load generator against a collector; its JSON figures."""
    port = c.url.rsplit(":", 1)[1].strip("/")
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench/collector_load.py"),
            "--port",
            port,
            "--senders",
            str(senders),
            "--seconds",
            str(seconds),
            "--count",
            "500000",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def ingest_figures(state: Path, args: list[str], seconds: float) -> dict[str, Any]:
    """Sustained ingest and RSS, on an empty database."""
    with running_collector(state, args) as c:
        time.sleep(2)
        idle = rss_kib(c.proc.pid)["VmRSS"]
        warm = load(c, 2)
        del warm
        cpu_before = cpu_seconds(c.proc.pid)
        result = load(c, seconds)
        cpu = cpu_seconds(c.proc.pid) - cpu_before
        memory = rss_kib(c.proc.pid)
        # CPU the collector spent per report: independent of how busy the shared machine is.
        result["collector_cpu_ms_per_report"] = round(cpu * 1000 / max(1, result["sent"]), 3)
        # Latency when not saturated: one sender at a time (a fleet reporting hourly).
        single = load(c, 3, senders=1)
        result.update(single_p50_ms=single["p50_ms"], single_p99_ms=single["p99_ms"])
        result.update(
            rss_idle_mib=round(idle / 1024, 1), rss_peak_mib=round(memory["VmHWM"] / 1024, 1)
        )
        rejected = [e for e in c.events() if e["event"] == "ingest.rejected"]
        result["rejected"] = len(rejected)
    return result


def _template() -> Accepted:
    result = validate(json.dumps(sample_report("00" * 16, 0)).encode(), 1 << 16)
    assert isinstance(result, Accepted)
    return result


def seed(store: SqlStore, reports: int, now_ms: int, settle: Any = None) -> list[str]:
    """Store `reports` reports over SESSIONS sessions, hourly, across the last 30 days.

    `settle` runs after every 50,000 reports: 30 days of traffic arrive in a minute or two,
    and PostgreSQL's autovacuum, which in real time runs many times a day, gets no chance
    to reclaim the session rows each report updates; this gives it those passes.
    """
    template = _template()
    head, tail = template.body.split(b'"seq_number": 0')
    per_session = max(1, reports // SESSIONS)
    ids = [uuid.uuid4().hex for _ in range(SESSIONS)]
    versions = ("2.60.0", "2.47.1", "2.44.1", "2.40.0", "2.30.0")
    batch: list[Accepted] = []
    stored = 0
    span = 30 * DAY_MS - per_session * HOUR_MS
    for n, sid in enumerate(ids):
        start = now_ms - 30 * DAY_MS + (n * 7919 * HOUR_MS) % max(HOUR_MS, span)
        facts = dict(zip(SESSION_FACTS, template.facts, strict=True))
        facts.update(ray_version=versions[n % len(versions)], total_num_nodes=(1, 4, 16, 64)[n % 4])
        libraries = (("train", "data"), ("serve",), ("tune", "train"), ())[n % 4]
        others = tuple(f for f in template.facets if f[0] != "library")
        session_facts = tuple(facts.values())
        facets = tuple(("library", name) for name in libraries) + others
        sid_bytes = sid.encode()
        for seq in range(per_session):
            if stored >= reports:
                break
            body = (
                head.replace(template.session_id.encode(), sid_bytes)
                + b'"seq_number": '
                + str(seq).encode()
                + tail
            )
            batch.append(
                dataclasses.replace(
                    template,
                    session_id=sid,
                    seq_number=seq,
                    body=body,
                    facts=session_facts,
                    facets=facets,
                )
            )
            stored += 1
            if len(batch) >= 2000:
                store.ingest(batch, start + seq * HOUR_MS)
                batch = []
                if settle is not None and stored % 50_000 == 0:
                    settle()
        if batch:
            store.ingest(batch, start)
            batch = []
    return ids


def timed(
    c: CollectorProcess,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[float, int]:
    """One request's wall time in ms, and its status."""
    started = time.perf_counter()
    answer = http(c.url + path.lstrip("/"), body if method == "POST" else None, headers)
    return (time.perf_counter() - started) * 1000, answer.status


def stored_figures(
    state: Path, args: list[str], store: SqlStore, reports: int, size: Any, settle: Any = None
) -> dict[str, Any]:
    """Page render, deletion and bytes per report with `reports` stored."""
    started = time.monotonic()
    ids = seed(store, reports, int(time.time() * 1000), settle)
    seed_s = time.monotonic() - started
    if settle is not None:
        settle()
    total, _ = store.counts()
    store.close()
    out: dict[str, Any] = {"stored_reports": total, "seed_s": round(seed_s, 1)}
    with running_collector(state, args, {DELETION_VARIABLE: DELETION_TOKEN}) as c:
        timed(c, "GET", "/")
        pages = [timed(c, "GET", "/") for _ in range(10)]
        apis = [timed(c, "GET", "/api/fleet") for _ in range(5)]
        deletions = []
        for sid in ids[:10]:
            body = json.dumps({"protocol": "usagestatsd-deletion/1", "session_ids": [sid]}).encode()
            auth = {"Authorization": f"Bearer {DELETION_TOKEN}"}
            deletions.append(timed(c, "POST", "/delete", body, auth))
        assert all(status == 200 for _, status in pages + apis + deletions)
        out["rss_with_data_mib"] = round(rss_kib(c.proc.pid)["VmRSS"] / 1024, 1)
    page_ms = sorted(ms for ms, _ in pages)
    delete_ms = sorted(ms for ms, _ in deletions)
    out.update(
        page_median_ms=round(statistics.median(page_ms), 1),
        page_max_ms=round(page_ms[-1], 1),
        api_median_ms=round(statistics.median(ms for ms, _ in apis), 1),
        delete_median_ms=round(statistics.median(delete_ms), 1),
        delete_max_ms=round(delete_ms[-1], 1),
        reports_per_deleted_session=max(1, reports // SESSIONS),
        bytes_per_report=round(size() / total),
    )
    return out


@contextlib.contextmanager
def maybe_postgres() -> Iterator[PostgresServer | None]:
    """A throwaway PostgreSQL with default durability (fsync on), or None."""
    server = start_postgres(durable=True)
    if isinstance(server, str):
        print(f"PostgreSQL figures skipped: {server}", file=sys.stderr)
        yield None
        return
    try:
        yield server
    finally:
        server.stop()


def sqlite_figures(results: dict[str, Any], tmp: Path, opts: Any) -> None:
    """Ingest on an empty SQLite database, then the figures with `--reports` stored."""
    from usagestatsd.collector.store_sqlite import SqliteStore

    results["sqlite_ingest"] = ingest_figures(tmp / "sqlite", [], opts.seconds)
    state = tmp / "sqlite-big"
    db = state / "collector.sqlite3"
    store = SqliteStore(db)
    store.migrate()

    def size() -> int:
        conn = sqlite3.connect(str(db))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        return sum(p.stat().st_size for p in state.iterdir())

    results["sqlite_stored"] = stored_figures(state, [], store, opts.reports, size)


def postgres_figures(results: dict[str, Any], tmp: Path, opts: Any, pg: PostgresServer) -> None:
    """The same on PostgreSQL."""
    import psycopg

    from usagestatsd.collector.store_postgres import PostgresStore

    dsn = create_database(pg, "ingest")
    results["postgresql_ingest"] = ingest_figures(tmp / "pg", ["--database-url", dsn], opts.seconds)
    big = create_database(pg, "big")
    store = PostgresStore(big)
    store.migrate()

    def vacuum() -> None:
        # What autovacuum does on its own over 30 days of real-time traffic (see seed()).
        with psycopg.connect(big, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")

    def size() -> int:
        vacuum()
        with psycopg.connect(big, autocommit=True) as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
            assert row is not None
            return int(row[0])

    results["postgresql_stored"] = stored_figures(
        tmp / "pg-big", ["--database-url", big], store, opts.reports, size, vacuum
    )


def main() -> int:
    """Run the figures; print them as JSON (and write them with --json)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--reports", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--json", type=Path)
    opts = parser.parse_args()
    results: dict[str, Any] = {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="usd-bench-") as tmp:
        if "sqlite" in opts.backends:
            sqlite_figures(results, Path(tmp), opts)
            print(json.dumps(results), flush=True)
        if "postgresql" in opts.backends:
            with maybe_postgres() as pg:
                if pg is not None:
                    postgres_figures(results, Path(tmp), opts, pg)
    results["load_average_at_end"] = os.getloadavg()
    text = json.dumps(results, indent=1)
    print(text)
    if opts.json:
        opts.json.write_text(text + "\n")
    return 0


def create_database(server: PostgresServer, name: str) -> str:
    """A new empty database on the throwaway server; its DSN."""
    import psycopg

    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.dsn.rsplit("/", 1)[0] + "/" + name


if __name__ == "__main__":
    sys.exit(main())
