"""The intake never absorbs a report it will not replace with its own (docs/beside-ray.md).

A real daemon with its real intake, a demo head whose session it will not report, and a
stand-in for Ray's reporter POSTing the way Ray does (its recorded body, once): Ray's
reporter must be told its report went nowhere, and the journal must say why.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.processes import await_line, intake_env, running_daemon
from tests.support.rayside import ray_report, recorded_json
from tests.support.servers import ScriptedEndpoint
from usagestatsd.cycle.beside_ray import UNDECIDED, BesideRay
from usagestatsd.demo import DemoCluster, make_session_dir, recorded_responses
from usagestatsd.facts.session import Session, find_session, trusted_uids


async def _post_as_ray(url: str) -> tuple[int, str, dict[str, object]]:
    """POST Ray's report as Ray's reporter does; its status, reason phrase and JSON body."""
    async with aiohttp.ClientSession() as http, http.post(url, data=ray_report(0)) as resp:
        return resp.status, resp.reason or "", json.loads(await resp.read())


def _head_of(temp_root: Path, ray_version: str) -> DemoCluster:
    """A demo head whose dashboard says it runs `ray_version`."""
    responses = recorded_responses()
    metadata = recorded_json("dash_report_cluster_metadata.json")
    metadata["data"]["rayVersion"] = ray_version
    responses["dash_ReportHead"]["/api/v0/cluster_metadata"] = json.dumps(metadata).encode()
    return DemoCluster(make_session_dir(temp_root), responses)


@pytest.fixture
async def old_head(temp_root: Path) -> AsyncIterator[DemoCluster]:
    """A Ray 1.12 head: Ray collects nothing before 1.13, so usagestatsd never reports it."""
    cluster = _head_of(temp_root, "1.12.1")
    await cluster.start()
    try:
        yield cluster
    finally:
        await cluster.stop()


async def test_a_session_the_daemon_will_not_report_keeps_rays_report_a_failure(
    old_head: DemoCluster, endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """Ray's report reaches the intake before the daemon has looked at the session: the
    intake waits for that first decision, then answers 503 naming it; nothing is sent."""
    env = intake_env(temp_root, state_dir, endpoint.url)
    with running_daemon(env) as daemon:
        url = json.loads(await await_line(daemon, "beside_ray.intake_listening"))["url"]
        status, reason, body = await _post_as_ray(url)
        assert (status, reason) == (503, "usagestatsd does not report this session")
        warning = json.loads(await await_line(daemon, "beside_ray.report_not_absorbed"))
        again = await _post_as_ray(url)  # the next hour's report: the same answer
        assert daemon.count("beside_ray.report_absorbed") == 0
    assert body["accepted"] is False
    assert str(body["problem"]).startswith("Ray 1.12 is not supported")
    assert again == (status, reason, body)
    assert warning["level"] == "warning"
    assert warning["reason"] == body["problem"]
    assert "restart Ray without RAY_USAGE_STATS_REPORT_URL" in warning["fix"]
    assert endpoint.received == []


async def test_a_reported_session_still_absorbs_rays_report(
    demo_session: DemoCluster, endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """The counterpart: a session usagestatsd reports absorbs Ray's report (200), even when
    it arrives before the daemon's first look, and usagestatsd's own report goes out."""
    env = intake_env(temp_root, state_dir, endpoint.url)
    with running_daemon(env) as daemon:
        url = json.loads(await await_line(daemon, "beside_ray.intake_listening"))["url"]
        status, _, body = await _post_as_ray(url)
        await await_line(daemon, "report.sent")
        assert daemon.count("beside_ray.report_not_absorbed") == 0
    assert (status, body) == (200, {"accepted": True})
    assert len(endpoint.received) >= 1


async def test_only_a_decision_on_the_followed_session_counts(
    demo_session: DemoCluster, temp_root: Path
) -> None:
    """Undecided is not "reports": nor is a decision on a session no longer followed."""
    session = find_session(temp_root, trusted_uids()).session
    assert session is not None
    followed: list[Session | None] = [None]
    beside = BesideRay("auto", lambda: followed[0])
    assert await beside.why_not_replaced(0.05) == UNDECIDED  # no session followed yet
    followed[0] = session
    beside.decided(session, None)
    assert await beside.why_not_replaced(0.05) is None
    beside.new_session(None, None, False)  # the daemon follows a new session
    assert await beside.why_not_replaced(0.05) == UNDECIDED
    beside.decided(session, "the cluster's consent cannot be confirmed")
    assert await beside.why_not_replaced(0.05) == "the cluster's consent cannot be confirmed"
