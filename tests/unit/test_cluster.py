"""Gathering over real Unix sockets: recorded answers map right; misbehaving sockets are nulls."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from tests.support.servers import RawUnixServer, http_reply, read_request
from usagestatsd.demo import DemoCluster, make_session_dir, recorded_responses
from usagestatsd.facts.cluster import gather
from usagestatsd.facts.fetch import Limits
from usagestatsd.facts.session import Session, find_session

FAST = Limits(timeout_s=1.0, max_bytes=1 << 20)


def session_of(temp_root: Path) -> Session:
    """The session the daemon would find."""
    found = find_session(temp_root).session
    assert found is not None
    return found


async def test_recorded_cluster(demo_session: DemoCluster, temp_root: Path) -> None:
    """The recorded Ray 2.60 sockets give every dashboard field, and no problems."""
    facts = await gather(session_of(temp_root), FAST)
    assert facts.problems == ()
    assert facts.metadata is not None and facts.metadata.ray_version == "2.60.0"
    assert facts.totals.total_num_cpus == 2
    assert facts.totals.total_num_nodes == 1
    assert facts.running_jobs == 0
    assert facts.config.cloud_provider == "unknown"
    assert facts.provider is None and not facts.provider_present


async def test_absent_sockets_give_nulls(temp_root: Path) -> None:
    """No dashboard: every field None, one problem per source, no exception, not running."""
    make_session_dir(temp_root)
    facts = await gather(session_of(temp_root), FAST)
    assert facts.metadata is None and facts.running_jobs is None
    assert facts.totals.total_num_cpus is None
    assert len(facts.problems) == 3  # metadata, cluster status, jobs
    # Without dash_* sockets (Ray before 2.47) the dashboard is asked over TCP, here at
    # Ray's default address since no dashboard process names this session.
    assert all(p.source.startswith("dashboard 127.0.0.1:8265") for p in facts.problems)
    assert facts.session_running is False


async def test_garbage_and_wrong_types(temp_root: Path) -> None:
    """Invalid JSON on one socket and wrong types on another null only their own fields."""
    responses = recorded_responses()
    responses["dash_ReportHead"]["/api/cluster_status"] = b"{this is not json"
    responses["dash_JobHead"] = {"/api/jobs/": b'{"jobs": "many"}'}
    cluster = DemoCluster(make_session_dir(temp_root), responses)
    await cluster.start()
    try:
        facts = await gather(session_of(temp_root), FAST)
    finally:
        await cluster.stop()
    problems = {p.source.split()[0]: p.problem for p in facts.problems}
    assert "invalid JSON" in problems["dash_ReportHead"]
    assert "array" in problems["dash_JobHead"]
    assert facts.totals.total_num_cpus is None and facts.running_jobs is None
    assert facts.metadata is not None  # the healthy socket still answered


async def test_fifty_megabyte_body_is_cut_off(temp_root: Path) -> None:
    """A 50 MB reply is not read past the cap; the field is null and the problem named."""
    responses = recorded_responses()
    responses["dash_JobHead"] = {"/api/jobs/": b"[" + b'{"status": "RUNNING"},' * 2_300_000}
    cluster = DemoCluster(make_session_dir(temp_root), responses)
    await cluster.start()
    try:
        facts = await gather(session_of(temp_root), Limits(timeout_s=10, max_bytes=1 << 20))
    finally:
        await cluster.stop()
    assert facts.running_jobs is None
    assert any("larger than" in p.problem for p in facts.problems)


async def test_socket_that_never_answers(temp_root: Path) -> None:
    """A socket that accepts and stays silent costs one timeout, not a hang."""
    session = make_session_dir(temp_root)

    def silent(conn: socket.socket) -> None:
        read_request(conn)
        time.sleep(5)

    server = RawUnixServer(session / "sockets" / "dash_ReportHead", silent)
    try:
        started = time.monotonic()
        facts = await gather(session_of(temp_root), Limits(timeout_s=0.5, max_bytes=1 << 20))
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert facts.metadata is None
    assert any("no complete answer" in p.problem for p in facts.problems)
    assert elapsed < 4


async def test_socket_closing_mid_body(temp_root: Path) -> None:
    """A reply cut short by the peer is a connection problem, not a crash."""
    session = make_session_dir(temp_root)

    def truncated(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(http_reply(b'{"result": true, "data": {}}' * 10)[:90])

    server = RawUnixServer(session / "sockets" / "dash_ReportHead", truncated)
    try:
        facts = await gather(session_of(temp_root), FAST)
    finally:
        server.close()
    assert facts.metadata is None
    assert any(p.source.startswith("dash_ReportHead") for p in facts.problems)


async def test_regular_file_and_symlink_are_not_sockets(temp_root: Path, tmp_path: Path) -> None:
    """A socket path that is a file, or a symlink to a socket elsewhere, is refused unopened."""
    session = make_session_dir(temp_root)
    (session / "sockets" / "dash_ReportHead").write_text("{}")
    elsewhere = temp_root.parent / "elsewhere.sock"
    server = RawUnixServer(elsewhere, lambda conn: None)
    os.symlink(elsewhere, session / "sockets" / "dash_JobHead")
    try:
        facts = await gather(session_of(temp_root), FAST)
    finally:
        server.close()
    problems = {p.source.split()[0]: p.problem for p in facts.problems}
    assert "not a socket" in problems["dash_ReportHead"]
    assert "not a socket" in problems["dash_JobHead"]
    assert server.connections == 0


async def test_cluster_config_file_is_read(
    demo_session: DemoCluster, temp_root: Path, tmp_path: Path
) -> None:
    """A readable autoscaler config gives provider, bounds and instance types."""
    config = tmp_path / "ray_bootstrap_config.yaml"
    config.write_text(
        "provider: {type: gcp}\nmin_workers: 1\nmax_workers: 4\nhead_node_type: h\n"
        "available_node_types:\n  h: {node_config: {machineType: n1-standard-4}}\n"
        "  w: {node_config: {machineType: n1-highmem-8}}\n"
    )
    facts = await gather(session_of(temp_root), FAST, config_path=config)
    assert facts.config.cloud_provider == "gcp"
    assert facts.config.head_node_instance_type == "n1-standard-4"
    assert facts.config.worker_node_instance_types == ("n1-highmem-8",)


async def test_garbage_cluster_config(
    demo_session: DemoCluster, temp_root: Path, tmp_path: Path
) -> None:
    """A config file that is not YAML is one named problem; the provider stays 'unknown'."""
    config = tmp_path / "bad.yaml"
    config.write_text("provider: [unclosed\n  - : :")
    facts = await gather(session_of(temp_root), FAST, config_path=config)
    assert facts.config.cloud_provider == "unknown"
    assert any("cluster config file" in p.source for p in facts.problems)


async def test_a_stopped_heads_sockets_say_what_kind_of_failure(temp_root: Path) -> None:
    """A socket file nobody listens on, and one that is gone: typed failures, 'not running'."""
    from usagestatsd.cycle.refusal import RefusalKind, cluster_refusal
    from usagestatsd.facts.sources import Failure

    session_dir = make_session_dir(temp_root)
    left_behind = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left_behind.bind(str(session_dir / "sockets" / "dash_ReportHead"))  # bound, never listens
    try:
        facts = await gather(session_of(temp_root), FAST)
    finally:
        left_behind.close()
    failures = {p.source.split()[0]: p.failure for p in facts.problems}
    assert failures["dash_ReportHead"] is Failure.NOBODY_LISTENS
    assert failures["dash_JobHead"] is Failure.ABSENT
    refusal = cluster_refusal(facts)
    assert refusal is not None and refusal.kind is RefusalKind.NOT_RUNNING
