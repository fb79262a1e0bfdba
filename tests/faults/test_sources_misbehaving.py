"""Dashboard and provider sockets misbehaving: the field goes null, one event, next cycle ok."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.faults.helpers import named, provider_doc, report_cycle, responses_with, the_session
from tests.support.servers import RawUnixServer, ScriptedEndpoint, http_reply, read_request
from usagestatsd.config.settings import Settings
from usagestatsd.demo import DemoCluster, make_session_dir
from usagestatsd.facts.cluster import gather
from usagestatsd.facts.fetch import Limits

# Each source the daemon reads: (socket, path).
METADATA = ("dash_ReportHead", "/api/v0/cluster_metadata")
STATUS = ("dash_ReportHead", "/api/cluster_status")
JOBS = ("dash_JobHead", "/api/jobs/")
PROVIDER = ("usagestatsd_provider", "/v1/usage")
SOURCES = (METADATA, STATUS, JOBS, PROVIDER)
SOCKETS = ("dash_ReportHead", "dash_JobHead", "usagestatsd_provider")
# Report fields each source feeds: their value when the recorded cluster answers, and when not.
FIELDS: dict[tuple[str, str], dict[str, Any]] = {
    STATUS: {"total_num_cpus": 2, "total_num_nodes": 1},
    JOBS: {"total_num_running_jobs": 0},
    # session_id is not here: the first report fixed it, and a provider that comes back
    # later does not change it (pipeline.choose_session_id; tests/process/test_session_id.py).
    PROVIDER: {"library_usages": ["core", "train"]},
}
NULLS: dict[tuple[str, str], dict[str, Any]] = {
    STATUS: {"total_num_cpus": None, "total_num_nodes": None},
    JOBS: {"total_num_running_jobs": None},
    PROVIDER: {"library_usages": []},
}

NESTED = b"[" * 200_000 + b"]" * 200_000
GENERIC: dict[str, bytes] = {
    "invalid JSON": b'{"result": tru',
    "not UTF-8": b'{"result": "\xff\xfe"}',
    "NaN": b'{"result": true, "data": {"x": NaN}, "protocol_version": NaN}',
    "Infinity": b'{"result": true, "data": {"x": -Infinity}, "protocol_version": Infinity}',
    "deeply nested": NESTED,
    "wrong type: string": b'"hello"',
    "wrong type: number": b"12",
    "wrong type: null": b"null",
    "100 MB body": b"[" + b" " * (100 << 20) + b"]",
}
SPECIFIC: dict[tuple[str, str], dict[str, bytes]] = {
    METADATA: {
        "negative": b'{"result": true, "data": {"sessionStartTimestampMs": -1}}',
        "huge": b'{"result": true, "data": {"sessionStartTimestampMs": 1e300}}',
        "wrong type: field": b'{"result": true, "data": {"rayVersion": ["2.60.0"]}}',
    },
    STATUS: {
        "negative": b'{"result": true, "data": {"clusterStatus": {"loadMetricsReport": '
        b'{"usage": {"CPU": [0, -4]}}}}}',
        "huge": b'{"result": true, "data": {"clusterStatus": {"loadMetricsReport": '
        b'{"usage": {"CPU": [0, 1e300]}}}}}',
        "wrong type: field": b'{"result": true, "data": {"clusterStatus": {"loadMetricsReport": '
        b'{"usage": {"CPU": "two"}}}}}',
    },
    JOBS: {
        "negative": b'[{"status": -1}]',
        "huge": b"[" + b'{"status": "RUNNING"},' * 300_000 + b'{"status": 1e999}]',
        "wrong type: field": b'{"jobs": []}',
    },
    PROVIDER: {
        "negative": b'{"protocol_version": 1, "library_usages": [], "extra_usage_tags": {}, '
        b'"hardware_usages": [], "total_num_nodes": -3}',
        "huge": json.dumps(
            {
                "protocol_version": 1,
                "library_usages": ["x"] * 100_000,
                "extra_usage_tags": {},
                "hardware_usages": [],
            }
        ).encode(),
        "wrong type: field": b'{"protocol_version": 1, "library_usages": "core", '
        b'"extra_usage_tags": {}, "hardware_usages": []}',
    },
}
CASES = [
    (source, name, body)
    for source in SOURCES
    for name, body in {**GENERIC, **SPECIFIC[source]}.items()
]


def healthy() -> dict[str, dict[str, bytes]]:
    """The recorded Ray 2.60 answers plus a provider socket."""
    return responses_with({"usagestatsd_provider": {"/v1/usage": provider_doc()}})


async def check_fault_then_recovery(
    settings: Settings,
    endpoint: ScriptedEndpoint,
    temp_root: Path,
    broken: dict[str, dict[str, bytes]],
    failing: list[tuple[str, str]],
    fault: Callable[[Path], Callable[[], None]] | None = None,
) -> list[Any]:
    """Cycle 1 with the fault: nulls and one event per failing source; cycle 2 healthy again.

    `broken` replaces some answers; `fault`, when given, replaces the whole socket of the
    first failing source (which is then not served at all).
    """
    session_dir = make_session_dir(temp_root)
    sock = failing[0][0] if failing else "usagestatsd_provider"
    drop = [sock] if fault else []
    cluster = DemoCluster(session_dir, responses_with({**healthy(), **broken}, drop=drop))
    await cluster.start()
    undo = fault(session_dir / "sockets" / sock) if fault else (lambda: None)
    cycle = report_cycle(settings)
    session = the_session(temp_root)
    try:
        with capture_logs() as first:
            await cycle.run(session)
        undo()
        await cluster.stop()
        cluster = DemoCluster(session_dir, healthy())
        await cluster.start()
        with capture_logs() as second:
            await cycle.run(session)
    finally:
        await cluster.stop()
    problems = named(first, "cluster.source_failed")
    assert sorted(p["source"] for p in problems) == sorted(f"{s} {p}" for s, p in failing), first
    assert all(p["problem"] for p in problems)
    assert named(second, "cluster.source_failed") == []  # (a crash would have raised out of run)
    bodies = endpoint.bodies()
    if METADATA in failing:
        # Without the metadata the cluster's consent cannot be confirmed: nothing is sent.
        assert [e["reason"] for e in named(first, "session.not_reported")] == [
            "cluster metadata unavailable, so the cluster's consent cannot be confirmed"
        ]
        assert len(bodies) == 1 and bodies[0]["ray_version"] == "2.60.0"
        return first
    assert len(bodies) == 2 and named(first, "report.sent")
    for source in failing:
        for field, value in NULLS[source].items():
            assert bodies[0][field] == value
        for field, value in FIELDS[source].items():
            assert bodies[1][field] == value
    assert bodies[1]["session_id"] == bodies[0]["session_id"]
    return first


@pytest.mark.parametrize(
    ("source", "name", "body"), CASES, ids=[f"{s[0]}{s[1]}-{n}" for s, n, _ in CASES]
)
async def test_bad_answer_nulls_only_its_fields(
    make_settings: Callable[..., Settings],
    endpoint: ScriptedEndpoint,
    temp_root: Path,
    source: tuple[str, str],
    name: str,
    body: bytes,
) -> None:
    """Garbage, wrong types, NaN, huge, nested or 100 MB answers: one named problem, then ok."""
    settings = make_settings({"RAY_USAGE_STATS_REPORT_URL": endpoint.url})
    started = time.monotonic()
    broken = {source[0]: {**healthy()[source[0]], source[1]: body}}
    await check_fault_then_recovery(settings, endpoint, temp_root, broken, [source])
    # A generous promise, not a measurement: no answer, however large or deep, holds a
    # cycle anywhere near a minute (a 100 MB body is cut at the cap, not read through).
    assert time.monotonic() - started < 60


def silent(path: Path) -> Callable[[], None]:
    """A fault: the socket accepts and never answers."""

    def hang(conn: socket.socket) -> None:
        read_request(conn)
        time.sleep(3)

    return RawUnixServer(path, hang).close


def cut_short(path: Path) -> Callable[[], None]:
    """A fault: the socket closes in the middle of the body."""

    def cut(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(http_reply(b'{"result": true, "data": {}}' * 20)[:120])

    return RawUnixServer(path, cut).close


def regular_file(path: Path) -> Callable[[], None]:
    """A fault: the socket path is a regular file."""
    path.write_text('{"result": true}')
    return path.unlink


def symlink_elsewhere(path: Path) -> Callable[[], None]:
    """A fault: the socket path is a symlink to a live socket outside the session."""
    elsewhere = path.parent.parent.parent / f"elsewhere-{path.name}.sock"
    server = RawUnixServer(elsewhere, lambda conn: conn.sendall(http_reply(b"{}")))
    os.symlink(elsewhere, path)

    def undo() -> None:
        assert server.connections == 0, "a symlinked socket was connected to"
        server.close()
        path.unlink()

    return undo


def missing(path: Path) -> Callable[[], None]:
    """A fault: the socket is not there."""
    return lambda: None


@pytest.mark.parametrize("sock", SOCKETS)
@pytest.mark.parametrize(
    "fault", [silent, cut_short, regular_file, symlink_elsewhere, missing], ids=lambda f: f.__name__
)
async def test_socket_faults(
    make_settings: Callable[..., Settings],
    endpoint: ScriptedEndpoint,
    temp_root: Path,
    sock: str,
    fault: Callable[[Path], Callable[[], None]],
) -> None:
    """Silent, cut short, a file, a symlink elsewhere, missing: one named problem, then ok."""
    settings = make_settings(
        {"RAY_USAGE_STATS_REPORT_URL": endpoint.url, "USAGESTATSD_SOCKET_TIMEOUT_S": "0.5"}
    )
    failing = [source for source in SOURCES if source[0] == sock]
    # The provider socket is optional: its absence is normal and not a problem.
    if fault is missing and sock == "usagestatsd_provider":
        failing = []
    events = await check_fault_then_recovery(
        settings, endpoint, temp_root, {}, failing, fault if failing else None
    )
    if fault is silent:
        problems = named(events, "cluster.source_failed")
        assert all("no complete answer within 0.5s" in p["problem"] for p in problems)


def gather_as_nobody(temp_root: Path) -> list[list[str]]:
    """In a forked child running as uid/gid 65534: gather once; the problems it met."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges for good, then use the daemon's own code
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            facts = asyncio.run(gather(the_session(temp_root), Limits(1.0, 1 << 20)))
            os.write(
                write_end, json.dumps([[p.source, p.problem] for p in facts.problems]).encode()
            )
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as pipe:
        output = pipe.read()
    assert status == 0
    problems: list[list[str]] = json.loads(output)
    return problems


async def test_permission_denied_socket(temp_root: Path) -> None:
    """A socket the daemon's user may not connect to is one named problem (run as nobody)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to another user")
    session_dir = make_session_dir(temp_root)
    cluster = DemoCluster(session_dir, healthy())
    await cluster.start()
    os.chmod(temp_root.parent, 0o755)
    for entry in (session_dir / "sockets").iterdir():
        os.chmod(entry, 0o777 if entry.name != "dash_JobHead" else 0o600)
    try:
        loop = asyncio.get_running_loop()
        problems = await loop.run_in_executor(None, gather_as_nobody, temp_root)
    finally:
        await cluster.stop()
    # (As nobody, root's ~/ray_bootstrap_config.yaml is unreadable too: not a socket.)
    problems = [p for p in problems if not p[0].startswith("cluster config file")]
    assert len(problems) == 1 and problems[0][0] == "dash_JobHead /api/jobs/"
    assert problems[0][1].startswith("connection failed (Permission denied")
