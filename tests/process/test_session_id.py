"""session_id is the session's identity: provider outages, restarts and retries keep it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.faults.helpers import provider_doc
from tests.support.poll import until
from tests.support.processes import daemon_env, report_then_stop, running_daemon
from tests.support.servers import ScriptedEndpoint
from usagestatsd.demo import DemoCluster, make_session_dir, recorded_responses
from usagestatsd.facts.cluster import METADATA_PATH, PROVIDER_SOCKET, REPORT_HEAD

CLUSTER_ID = "0f" * 28


@pytest.fixture
async def provider(demo_session: DemoCluster) -> AsyncIterator[DemoCluster]:
    """The demo session's provider, not serving yet; stopped after the test."""
    cluster = DemoCluster(
        demo_session.session_dir, {PROVIDER_SOCKET: {"/v1/usage": provider_doc()}}
    )
    yield cluster
    await cluster.stop()


async def test_provider_outage_keeps_session_id_and_restart_too(
    provider: DemoCluster, endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """Provider up, gone for a while, back; the daemon restarted: one session_id throughout."""
    await provider.start()
    env = daemon_env(temp_root, state_dir, endpoint.url)
    with running_daemon(env) as daemon:
        await until(lambda: len(endpoint.received) >= 1)
        await provider.stop()  # the provider stops mid-session
        seen = len(endpoint.received)
        await until(lambda: len(endpoint.received) >= seen + 2)
        await provider.start()
        seen = len(endpoint.received)
        await until(
            lambda: (
                len(endpoint.received) >= seen + 2 and endpoint.bodies()[-1]["library_usages"] != []
            )
        )
        assert daemon.stop() == 0
    await provider.stop()  # restarted daemon, no provider at all
    await report_then_stop(env, endpoint, len(endpoint.received) + 1)
    bodies = endpoint.bodies()
    assert {b["session_id"] for b in bodies} == {CLUSTER_ID}
    assert [b["seq_number"] for b in bodies] == list(range(len(bodies)))
    # Without the provider, its fields are empty in that report; the identity stays.
    assert any(b["library_usages"] == [] for b in bodies)
    assert bodies[0]["library_usages"] == ["core", "train"]


async def test_id_without_provider_at_first_report_is_kept_when_it_appears(
    provider: DemoCluster, endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """No provider at the first report: the random id stays even once the provider serves."""
    with running_daemon(daemon_env(temp_root, state_dir, endpoint.url)) as daemon:
        await until(lambda: len(endpoint.received) >= 1)
        await provider.start()
        await until(lambda: endpoint.bodies()[-1]["library_usages"] != [])
        assert daemon.stop() == 0
    ids = {b["session_id"] for b in endpoint.bodies()}
    assert len(ids) == 1 and CLUSTER_ID not in ids


def _metadata_of_start(session_id: str, start_ms: int) -> dict[str, dict[str, bytes]]:
    """The recorded responses, with cluster metadata as Ray up to 2.20 writes it at a start."""
    responses = recorded_responses()
    doc = json.loads(responses[REPORT_HEAD][METADATA_PATH])
    doc["data"].update(sessionId=session_id, sessionStartTimestampMs=start_ms)
    responses[REPORT_HEAD][METADATA_PATH] = json.dumps(doc).encode()
    return responses


async def test_a_restarted_heads_facts_are_not_sent_under_the_old_identity(
    endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """The session's reports carry the metadata's UUID (Ray up to 2.20); then the head is
    restarted and, before the daemon follows a new session, the cluster it reads names
    another UUID and start time: no report pairs the old identity with the new facts."""
    session_dir = make_session_dir(temp_root)
    first = DemoCluster(
        session_dir, _metadata_of_start("11111111-1111-4111-8111-111111111111", 1000)
    )
    await first.start()
    env = daemon_env(temp_root, state_dir, endpoint.url)
    try:
        with running_daemon(env) as daemon:
            await until(lambda: len(endpoint.received) >= 2)
            await first.stop()
            second = DemoCluster(
                session_dir, _metadata_of_start("22222222-2222-4222-8222-222222222222", 2000)
            )
            await second.start()
            try:
                await until(lambda: daemon.count("session.facts_of_another_start") >= 2)
            finally:
                await second.stop()
            assert daemon.stop() == 0
    finally:
        await first.stop()
    pairs = {(b["session_id"], b["session_start_timestamp_ms"]) for b in endpoint.bodies()}
    assert pairs == {("11111111-1111-4111-8111-111111111111", 1000)}
