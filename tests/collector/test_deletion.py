"""Deletion end to end: the real daemon reports into a real collector, then `forget`."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.collector.harness import CollectorProcess, running_collector, sample_report
from tests.support.poll import until
from tests.support.processes import daemon_env, run_cli, running_daemon
from usagestatsd.demo import DemoCluster

PROTOCOL = "usagestatsd-deletion/1"
DELETION_TOKEN = "deletion-token-0123456789abcdef"
DELETION_ENV = {"USAGESTATSD_COLLECTOR_DELETION_TOKENS": DELETION_TOKEN}
DELETION_AUTH = {"Authorization": f"Bearer {DELETION_TOKEN}"}


def _rows_mentioning(db: Path, session_id: str) -> int:
    conn = sqlite3.connect(str(db))
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        total = 0
        for table in tables:
            columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            for column in columns:
                total += conn.execute(
                    f"SELECT COUNT(*) FROM {table} WHERE CAST({column} AS TEXT) LIKE ?",
                    (f"%{session_id}%",),
                ).fetchone()[0]
        return int(total)
    finally:
        conn.close()


async def test_daemon_reports_then_forget_leaves_nothing(
    demo_session: DemoCluster, temp_root: Path, state_dir: Path, tmp_path: Path
) -> None:
    """usagestatsd run -> collector; usagestatsd forget -> every trace of the session is gone.

    The collector requires a token, which usagestatsd sends as the password of its endpoint
    URL (Basic auth): no daemon change is needed to use tokens.
    """
    token = "fleet-token-0123456789abcdef"
    tokens = {"USAGESTATSD_COLLECTOR_INGEST_TOKENS": token, **DELETION_ENV}
    with running_collector(tmp_path / "collector", env=tokens) as collector:
        other = sample_report("feedfacefeedfacefeedfacefeedface", 0)
        auth = {"Authorization": f"Bearer {token}"}
        assert collector.post(other, headers=auth).status == 200
        url = collector.url.replace("http://", f"http://collector:{token}@")
        env = daemon_env(temp_root, state_dir, url)
        settings = tmp_path / "usagestatsd.toml"
        deletion_url = collector.url.replace("http://", f"http://forget:{DELETION_TOKEN}@")
        settings.write_text(
            f'[[endpoints]]\nurl = "{url}"\ndeletion_url = "{deletion_url}delete"\n'
        )
        with running_daemon(env, settings_file=settings) as daemon:
            await until(lambda: collector.get("/api/fleet").json()["reports_stored"] >= 3)
        assert token not in "\n".join(daemon.lines)
        assert DELETION_TOKEN not in "\n".join(daemon.lines)
        fleet = collector.get("/api/fleet").json()
        sid = next(
            s["session_id"]
            for s in fleet["recent_sessions"]
            if s["session_id"] != other["session_id"]
        )
        assert collector.get(f"/sessions/{sid}").status == 200
        code, out, err = await run_cli(
            ["forget", "--session", sid, "--config", str(settings)],
            {k: v for k, v in env.items() if k != "RAY_USAGE_STATS_REPORT_URL"},
        )
        assert code == 0, (out, err)
        assert "deleted" in out and "purged" in out
        # Gone from every view, and a second request is told there is nothing (404).
        assert collector.get(f"/sessions/{sid}").status == 404
        assert collector.get(f"/api/sessions/{sid}").status == 404
        after = collector.get("/api/fleet").json()
        assert [s["session_id"] for s in after["recent_sessions"]] == [other["session_id"]]
        assert after["reports_stored"] == 1
        again = collector.post(
            json.dumps({"protocol": PROTOCOL, "session_ids": [sid]}).encode(),
            "delete",
            DELETION_AUTH,
        )
        assert again.status == 404
        metrics = collector.get("/metrics").body.decode()
        assert "usagestatsd_collector_sessions_deleted_total 1" in metrics
        assert collector.stop() == 0
    db = tmp_path / "collector" / "collector.sqlite3"
    assert _rows_mentioning(db, sid) == 0
    assert _rows_mentioning(db, other["session_id"]) > 0
    # Not even in freed pages or the write-ahead log (secure_delete, checkpointed at close).
    raw = b"".join(p.read_bytes() for p in db.parent.iterdir() if p.is_file())
    assert sid.encode() not in raw


def test_deletion_requests_are_checked(tmp_path: Path) -> None:
    """Wrong protocol, bad ids, too many ids: 400, and nothing is deleted."""
    with running_collector(tmp_path / "state", env=DELETION_ENV) as collector:
        _check_deletion_requests(collector)


def _check_deletion_requests(collector: CollectorProcess) -> None:
    sid = "0123456789abcdef0123456789abcdef"
    assert collector.post(sample_report(sid, 0)).status == 200
    bad = [
        {"protocol": "usagestatsd-deletion/2", "session_ids": [sid]},
        {"protocol": PROTOCOL, "session_ids": []},
        {"protocol": PROTOCOL, "session_ids": ["../etc/passwd"]},
        {"protocol": PROTOCOL, "session_ids": ["ffffffffffff"]},  # hex, not a session_id's shape
        {"protocol": PROTOCOL, "session_ids": ["--------"]},
        {"protocol": PROTOCOL, "session_ids": [sid] * 1001},
        {"protocol": PROTOCOL, "session_ids": sid},
    ]
    for body in bad:
        assert collector.post(body, "delete", DELETION_AUTH).status == 400, body
    assert collector.post(b"{", "delete", DELETION_AUTH).status == 400
    assert collector.get("/api/fleet").json()["reports_stored"] == 1
    ids = [sid, "f" * 32]  # of the shape, never reported: nothing to delete
    ok = collector.post({"protocol": PROTOCOL, "session_ids": ids}, "delete", DELETION_AUTH)
    assert ok.json() == {"deleted_sessions": 1, "deleted_reports": 1}


def _database_bytes(state_dir: Path) -> bytes:
    """Every byte of every file the database uses (main file, -wal, -shm, any journal)."""
    return b"".join(p.read_bytes() for p in sorted(state_dir.iterdir()) if p.is_file())


def test_answered_deletion_leaves_no_copy_in_any_database_file(tmp_path: Path) -> None:
    """While the collector keeps running, right after its 200, no file it writes (the
    write-ahead log included) holds the deleted session's id; another session's stays."""
    sid, kept = "5e55105e5e55105e5e55105e5e55105e", "4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b"
    with running_collector(tmp_path / "state", env=DELETION_ENV) as collector:
        for seq in range(5):
            assert collector.post(sample_report(sid, seq)).status == 200
        assert collector.post(sample_report(kept, 0)).status == 200
        assert sid.encode() in _database_bytes(collector.state_dir)
        answer = collector.post(
            {"protocol": PROTOCOL, "session_ids": [sid]}, "delete", DELETION_AUTH
        )
        assert answer.json() == {"deleted_sessions": 1, "deleted_reports": 5}
        files = sorted(p.name for p in collector.state_dir.iterdir())
        raw = _database_bytes(collector.state_dir)
        assert sid.encode() not in raw, files
        assert kept.encode() in raw
        assert collector.get(f"/api/sessions/{kept}").status == 200
