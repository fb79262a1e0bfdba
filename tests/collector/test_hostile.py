"""Hostile senders, run as the local user nobody: whatever they send or hold open, an honest
sender is answered, the collector's descriptors and log stay bounded."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.collector.harness import CollectorProcess, running_collector, sample_report
from tests.support.hostile import as_user, needs_root, running_as

IDLE_CONNECTIONS = 1100
DESCRIPTORS = 1024  # what the collector may open: a common default soft limit
CAP = 256  # max_connections, below the 1,100 held: the collector must make room
SENDER_TIMEOUT_S = 10.0  # Ray's own reporter gives up after 10 s
# Loaded now: the child acting as nobody cannot import from root's interpreter directory.
"127.0.0.1".encode("idna")


@contextlib.contextmanager
def descriptor_limit(limit: int) -> Iterator[None]:
    """Processes started in the block start with a soft limit of `limit` descriptors."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def _open_idle(url: str, count: int) -> list[socket.socket]:
    """`count` connections that never send a byte."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    held = []
    for _ in range(count):
        with contextlib.suppress(OSError):
            held.append(socket.create_connection((host, int(port)), timeout=5))
    return held


def _hold_idle(url: str, count: int) -> Callable[[Callable[[str], None]], None]:
    def serve(ready: Callable[[str], None]) -> None:
        held = _open_idle(url, count)
        ready(str(len(held)))
        time.sleep(3600)

    return serve


def _honest_post(url: str, report: dict[str, object]) -> int:
    request = urllib.request.Request(
        url, json.dumps(report).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=SENDER_TIMEOUT_S) as answer:
        return int(answer.status)


def _descriptors(collector: CollectorProcess) -> int:
    return len(os.listdir(f"/proc/{collector.proc.pid}/fd"))


@needs_root
def test_idle_connections_do_not_keep_an_honest_sender_out(tmp_path: Path) -> None:
    """nobody holds 1,100 idle connections to a collector allowed 1,024 descriptors and
    256 connections: an honest report is still answered within a sender's timeout, the
    collector holds at most its connection cap, and its log has no traceback and a handful
    of lines."""
    config = tmp_path / "collector.toml"
    config.write_text(f"max_connections = {CAP}\n")
    with (
        descriptor_limit(DESCRIPTORS),
        running_collector(tmp_path / "state", config=config) as collector,
    ):
        start = len(collector.lines)
        with running_as(_hold_idle(collector.url, IDLE_CONNECTIONS)) as (_, opened):
            assert int(opened) >= 1000
            statuses = [_honest_post(collector.url, sample_report("ab" * 16, n)) for n in range(3)]
            assert statuses == [200, 200, 200]
            assert _descriptors(collector) <= CAP + 64
        during = collector.lines[start:]
        assert not [line for line in during if "Traceback" in line]
        assert len(during) < 20, during[:5]
        closed = collector.events("http.connections_closed", at_least=1)
        assert closed and all("address" not in e and "peer" not in e for e in closed)
        assert collector.get("/api/fleet").json()["reports_stored"] == 3


@needs_root
def test_idle_connections_are_closed(tmp_path: Path) -> None:
    """Connections that send nothing (or half a request head) are closed by the collector
    within its head deadline, not held forever."""

    def attack() -> str:
        held = _open_idle(url, 50)
        for sock in held[::2]:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")  # a head never finished
        deadline = time.monotonic() + 40
        closed: set[socket.socket] = set()
        while len(closed) < len(held) and time.monotonic() < deadline:
            readable, _, _ = select.select([s for s in held if s not in closed], [], [], 1)
            for sock in readable:
                with contextlib.suppress(OSError):
                    if sock.recv(4096):
                        continue
                closed.add(sock)
        return f"{len(closed)}/{len(held)}"

    with running_collector(tmp_path / "state") as collector:
        url = collector.url
        assert as_user(attack) == "50/50"
        assert collector.get("/healthz").status == 200


def _post_as_nobody(url: str, bodies: list[bytes], token: str = "") -> list[int]:
    """POST each body from a process of the local user nobody; the statuses."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"

    def attack() -> str:
        statuses = []
        for body in bodies:
            request = urllib.request.Request(url, body, headers)
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    statuses.append(answer.status)
            except urllib.error.HTTPError as exc:
                statuses.append(exc.code)
        return json.dumps(statuses)

    result = as_user(attack)
    assert result.startswith("["), result
    return [int(s) for s in json.loads(result)]


def _bloated_report(seq: int) -> bytes:
    """A report the guard lets through whole, about 60 KB (a real one is about 1.9 KB)."""
    body = sample_report("bb" * 16, seq)
    body["extra_usage_tags"] = {f"k{i:03d}" + "a" * 58: "v" * 160 for i in range(200)}
    body["library_usages"] = [f"lib{i:03d}" + "b" * 40 for i in range(200)]
    return json.dumps(body).encode()


@needs_root
def test_bloated_reports_are_refused(collector: CollectorProcess) -> None:
    """Reports far larger than any real one are answered 413 and not stored; a real one is."""
    bodies = [_bloated_report(n) for n in range(5)]
    assert all(50_000 < len(b) < 65_536 for b in bodies)
    assert _post_as_nobody(collector.url, bodies) == [413] * 5
    assert collector.get("/api/fleet").json()["reports_stored"] == 0
    rejected = collector.events("ingest.rejected", at_least=5)
    assert [e["reason"] for e in rejected] == ["too_large"] * 5
    assert _post_as_nobody(collector.url, [json.dumps(sample_report("bb" * 16, 9)).encode()]) == [
        200
    ]


@needs_root
def test_deeply_nested_reports_are_refused_before_parsing(collector: CollectorProcess) -> None:
    """A report nested 450 deep is a 400 with one warning naming it, not a 500 and a
    traceback; the collector goes on serving."""
    nested: object = {"a": 1}
    for _ in range(450):
        nested = {"x": nested}
    listed: object = [1]
    for _ in range(450):
        listed = [listed]
    bodies = [
        json.dumps(sample_report("cc" * 16, 0, extra_usage_tags=nested)).encode(),
        json.dumps(sample_report("cc" * 16, 1, library_usages=listed)).encode(),
        b"[" * 100_000 + b"]" * 100_000,
    ]
    assert _post_as_nobody(collector.url, bodies) == [400, 400, 413]
    rejected = collector.events("ingest.rejected", at_least=3)
    assert [e["reason"] for e in rejected] == ["schema", "schema", "too_large"]
    assert "nests deeper" in rejected[0]["detail"]
    assert not [line for line in collector.lines if "Traceback" in line or "Recursion" in line]
    assert collector.get("/healthz").status == 200


def _nodes(collector: CollectorProcess, session_id: str) -> int:
    """The node count the page shows for a session (its newest report's)."""
    sessions = collector.get("/api/fleet").json()["recent_sessions"]
    return int(next(s["nodes"] for s in sessions if s["session_id"] == session_id))


@needs_root
def test_an_ingest_token_holder_cannot_hijack_a_sessions_seq_numbers(tmp_path: Path) -> None:
    """nobody holds the shared ingest token and a session id read from the page: its
    far-future reports (seq 2^53, or past the window) are refused and its forged facts do
    not stand; a report it slipped in at the head's next seq is not passed off as a repeat
    of the head's own (409 conflict, logged and counted: the operator sees it)."""
    token = "ingest-token-0123456789abcdef"
    env = {"USAGESTATSD_COLLECTOR_INGEST_TOKENS": token}
    auth = {"Authorization": f"Bearer {token}"}
    sid = "ee" * 16
    with running_collector(tmp_path / "state", env=env) as collector:
        for seq in range(3):
            honest = sample_report(sid, seq, total_num_nodes=4)
            assert collector.post(honest, headers=auth).status == 200
        forged = [
            json.dumps(sample_report(sid, seq, total_num_nodes=999)).encode()
            for seq in (2**53, 5000, 3)
        ]
        statuses = _post_as_nobody(collector.url, forged, token)
        # Within the window a token holder is a sender like any other: its seq 3 is stored
        # and is the newest, until the head's own next report.
        assert statuses == [409, 409, 200]
        assert _nodes(collector, sid) == 999
        answer = collector.post(sample_report(sid, 3, total_num_nodes=4), headers=auth)
        assert answer.status == 409 and "another report" in answer.json()["error"]
        reasons = [e["reason"] for e in collector.events("ingest.rejected", at_least=3)]
        assert reasons == ["ahead", "ahead", "conflict"]
        metrics = collector.get("/metrics").body.decode()
        assert 'reports_rejected_total{reason="conflict"} 1' in metrics
        assert collector.post(sample_report(sid, 4, total_num_nodes=4), headers=auth).status == 200
        nodes = {
            s["session_id"]: s["nodes"]
            for s in collector.get("/api/fleet").json()["recent_sessions"]
        }
        assert nodes[sid] == 4
