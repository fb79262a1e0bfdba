"""Ingest through a real collector process: stored once, bad input refused, guard on arrival."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import uuid
from pathlib import Path

from tests.collector.harness import (
    CollectorProcess,
    http,
    running_collector,
    sample_report,
)
from tests.support.poll import wait_until

SID = "0123456789abcdef0123456789abcdef"


def test_stored_once_and_shown_exactly(collector: CollectorProcess) -> None:
    """A retried report (same session_id, seq_number) is stored once; the page shows its bytes."""
    report = sample_report(SID, 3)
    first, again = collector.post(report), collector.post(report)
    assert (first.status, first.json()) == (200, {"stored": True, "duplicate": False})
    assert (again.status, again.json()) == (200, {"stored": True, "duplicate": True})
    assert collector.post(sample_report(SID, 4)).status == 200
    stored = collector.get(f"/api/sessions/{SID}").json()
    assert [r["seq_number"] for r in stored["reports"]] == [4, 3]
    assert stored["reports"][1]["report"] == report
    metrics = collector.get("/metrics").body.decode()
    assert "usagestatsd_collector_reports_ingested_total 2" in metrics
    assert "usagestatsd_collector_reports_duplicate_total 1" in metrics
    assert "usagestatsd_collector_reports_stored 2" in metrics
    assert collector.get("/healthz").body == b"ok\n"


def test_bad_input_is_refused_with_one_event_naming_it(collector: CollectorProcess) -> None:
    """Each kind of bad body gets a 4xx and one warning naming what was wrong (never a value)."""
    cases = [
        (b"not json", 400, "not_json"),
        (b"[1, 2]", 400, "schema"),
        (json.dumps(sample_report(SID, 0, ray_version=7)).encode(), 400, "schema"),
        (json.dumps({**sample_report(SID, 0), "extra": 1}).encode(), 400, "schema"),
        (json.dumps(sample_report(SID, 0, library_usages=["x"] * 300)).encode(), 400, "limits"),
        (json.dumps(sample_report(SID, 2**60)).encode(), 400, "limits"),
        (json.dumps(sample_report("Not-A-Session!")).encode(), 400, "privacy"),
        (b'{"a": "' + b"x" * 70000 + b'"}', 413, "too_large"),
    ]
    for body, status, reason in cases:
        answer = collector.post(body)
        assert answer.status == status, (reason, answer)
        assert "error" in answer.json()
    rejected = collector.events("ingest.rejected", at_least=len(cases))
    assert [e["reason"] for e in rejected] == [c[2] for c in cases]
    assert "ray_version" in rejected[2]["detail"] and "extra" in rejected[3]["detail"]
    assert "library_usages" in rejected[4]["detail"]
    metrics = collector.get("/metrics").body.decode()
    assert 'reports_rejected_total{reason="schema"} 3' in metrics
    assert collector.get("/api/fleet").json()["reports_stored"] == 0


def test_reports_sent_together_each_get_their_own_answer(collector: CollectorProcess) -> None:
    """Bodies that arrive together are checked together (one trip to a validation process
    for several): each request still gets its own answer, event and count."""
    sessions = [uuid.uuid4().hex for _ in range(30)]
    bodies = [
        json.dumps(sample_report(sid, 0, **({"ray_version": 7} if n % 3 == 0 else {}))).encode()
        for n, sid in enumerate(sessions)
    ]
    bodies[1] = b"[" * 20 + b"]" * 20  # nested too deep, in the midst of valid ones
    statuses: dict[int, int] = {}
    start = threading.Barrier(len(bodies))

    def send(n: int) -> None:
        start.wait()
        statuses[n] = collector.post(bodies[n]).status

    threads = [threading.Thread(target=send, args=(n,)) for n in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    refused = {n for n in range(len(bodies)) if n % 3 == 0 or n == 1}
    assert statuses == {n: 400 if n in refused else 200 for n in range(len(bodies))}
    rejected = collector.events("ingest.rejected", at_least=len(refused))
    assert sorted(e["reason"] for e in rejected) == ["schema"] * len(refused)
    fleet = collector.get("/api/fleet").json()
    assert fleet["reports_stored"] == len(bodies) - len(refused)
    for n in (2, 29):
        stored = collector.get(f"/api/sessions/{sessions[n]}").json()["reports"]
        assert [r["report"] for r in stored] == [json.loads(bodies[n])]


def _validation_processes(collector_pid: int) -> set[int]:
    """The collector's grandchildren: the processes its fork server started."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat[1])
    children = {pid for pid, parent in parents.items() if parent == collector_pid}
    return {pid for pid, parent in parents.items() if parent in children}


def test_a_validation_process_that_dies_is_replaced(collector: CollectorProcess) -> None:
    """Killing every validation process costs at most the reports they held: the next
    reports are checked by new ones and stored."""
    assert collector.post(sample_report(SID, 0)).status == 200
    killed = _validation_processes(collector.proc.pid)
    assert killed
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    seq = iter(range(1, 100))
    wait_until(lambda: collector.post(sample_report(SID, next(seq))).status == 200, 20)
    assert [collector.post(sample_report(SID, next(seq))).status for _ in range(5)] == [200] * 5
    assert _validation_processes(collector.proc.pid).isdisjoint(killed)
    assert collector.get("/healthz").status == 200


def test_privacy_guard_on_arrival_nulls_and_drops(collector: CollectorProcess) -> None:
    """An address in a tag, a path as a library, a host name as instance type: removed."""
    report = sample_report(
        SID,
        0,
        head_node_instance_type="head.corp.example.com",
        library_usages=["train", "/home/alice/lib"],
        extra_usage_tags={"gcs_storage": "memory", "node_ip": "10.1.2.3"},
    )
    assert collector.post(report).status == 200
    stored = collector.get(f"/api/sessions/{SID}").json()["reports"][0]["report"]
    assert stored["head_node_instance_type"] is None
    assert stored["library_usages"] == ["train"]
    assert stored["extra_usage_tags"] == {"gcs_storage": "memory"}
    redacted = collector.events("ingest.redacted", at_least=1)
    assert redacted[0]["fields"] == [
        "extra_usage_tags.node_ip",
        "head_node_instance_type",
        "library_usages",
    ]
    collector.stop()  # every line written and read
    log = "\n".join(collector.lines)
    for value in ("10.1.2.3", "alice", "corp.example.com"):
        assert value not in log


def test_sender_address_and_headers_are_never_kept(tmp_path: Path) -> None:
    """From 127.0.0.2 with X-Forwarded-For and User-Agent: no stored byte, no log line has them."""
    state = tmp_path / "state"
    secrets = ("127.0.0.2", "203.0.113.77", "198.51.100.9", "alice-laptop", "curious-agent")
    with running_collector(state, ["--log-level", "debug"]) as c:
        port = c.url.rsplit(":", 1)[1].strip("/")
        import http.client
        import socket

        sock = socket.create_connection(("127.0.0.1", int(port)), source_address=("127.0.0.2", 0))
        conn = http.client.HTTPConnection("127.0.0.1", int(port))
        conn.sock = sock
        body = json.dumps(sample_report(SID, 0)).encode()
        conn.request(
            "POST",
            "/",
            body,
            {
                "Content-Type": "application/json",
                "X-Forwarded-For": "203.0.113.77",
                "X-Real-IP": "198.51.100.9",
                "Forwarded": "for=203.0.113.77",
                "User-Agent": "curious-agent/9 (alice-laptop)",
                "Host": "alice-laptop",
            },
        )
        assert conn.getresponse().status == 200
        conn.close()
        # A malformed request (aiohttp logs those with the peer's address by itself).
        with socket.create_connection(
            ("127.0.0.1", int(port)), source_address=("127.0.0.2", 0)
        ) as raw:
            raw.sendall(
                b"POST / HTTP/1.1\r\nHost: alice-laptop\r\nX-Forwarded-For: 203.0.113.77\r\n"
                b"Content-Length: 2\r\nBroken header line\r\n\r\n{}"
            )
            assert b" 400 Bad Request" in raw.recv(4096)
        # Something is logged at debug level too, so the log was not simply empty.
        assert c.post(b"garbage").status == 400
        assert c.stop() == 0
        stored = b"".join(p.read_bytes() for p in state.iterdir() if p.is_file())
        logs = "\n".join(c.lines)
    assert SID.encode() in stored and "ingest.rejected" in logs
    assert "http.request_failed" in logs  # the malformed request is still logged, anonymously
    for secret in secrets:
        assert secret.encode() not in stored, secret
        assert secret not in logs, secret


def test_bearer_tokens(tmp_path: Path) -> None:
    """With tokens: 401 without one; Bearer, or Basic with the token as password, accepted."""
    token, deletion_token = "s3cret-token-0123456789", "deletion-token-0123456789"
    env = {
        "USAGESTATSD_COLLECTOR_INGEST_TOKENS": token,
        "USAGESTATSD_COLLECTOR_DELETION_TOKENS": deletion_token,
    }
    with running_collector(tmp_path / "state", env=env) as c:
        report = sample_report(SID, 0)
        denied = c.post(report)
        assert denied.status == 401 and "Bearer" in denied.headers["WWW-Authenticate"]
        assert c.post(report, headers={"Authorization": "Bearer wrong-token-000000"}).status == 401
        assert c.post(report, headers={"Authorization": f"Bearer {token}"}).status == 200
        import base64

        basic = base64.b64encode(f"collector:{token}".encode()).decode()
        assert (
            c.post(sample_report(SID, 1), headers={"Authorization": f"Basic {basic}"}).status == 200
        )
        deletion = json.dumps({"protocol": "usagestatsd-deletion/1", "session_ids": [SID]}).encode()
        assert c.post(deletion, "delete").status == 401
        assert c.post(deletion, "delete", {"Authorization": f"Bearer {token}"}).status == 401
        auth = {"Authorization": f"Bearer {deletion_token}"}
        assert c.post(deletion, "delete", auth).status == 200
        c.stop()
        logs = "\n".join(c.lines)
    assert token not in logs and deletion_token not in logs


def test_busy_writer_answers_429_with_retry_after(tmp_path: Path) -> None:
    """While the database is locked the queue fills; beyond max_pending: 429 + Retry-After.

    Thirty senders at once: exactly max_pending (10) are admitted and wait for the writer,
    the other twenty are turned away at once, however the requests interleave.
    """
    state = tmp_path / "state"
    config = tmp_path / "collector.toml"
    config.write_text("max_pending = 10\n")
    with running_collector(state, config=config) as c:
        blocker = sqlite3.connect(str(state / "collector.sqlite3"), isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # holds the write lock: the writer waits
        answers: list[int] = []

        def send(n: int) -> None:
            answers.append(c.post(sample_report(SID, n)).status)

        threads = [threading.Thread(target=send, args=(n,)) for n in range(30)]
        for t in threads:
            t.start()
        # Well inside SQLite's 30 s busy timeout, after which the admitted ones would fail.
        turned_away = wait_until(lambda: answers.count(429) >= 20, timeout=20, fail=False)
        throttled = http(c.url, json.dumps(sample_report(SID, 99)).encode())
        blocker.execute("ROLLBACK")
        for t in threads:
            t.join(60)
    assert turned_away, f"only {answers.count(429)} of 20 turned away: {answers}"
    assert throttled.status == 429 and throttled.headers["Retry-After"].isdigit()
    assert sorted(answers) == [200] * 10 + [429] * 20
