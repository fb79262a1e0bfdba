"""The first report comes soon: a new session is noticed when it appears (inotify), and in
the routed arrangement our first report follows Ray's first one at once."""

from __future__ import annotations

import json
import time
from pathlib import Path

import aiohttp

from tests.conftest import daemon_env, recorded_json
from tests.support.servers import ScriptedEndpoint, await_line, running_daemon, until
from usagestatsd.demo import DemoCluster, make_session_dir, recorded_responses

HOUR = "3600"  # so that neither the schedule nor the tick (60 s) can explain a quick result


async def test_new_session_noticed_at_once(
    endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """Ray starts after the daemon: the session is found within seconds, not at the tick."""
    env = daemon_env(temp_root, state_dir, endpoint.url, RAY_USAGE_STATS_REPORT_INTERVAL_S=HOUR)
    with running_daemon(env) as daemon:
        await await_line(daemon, "session.missing")
        cluster = DemoCluster(make_session_dir(temp_root), recorded_responses())
        await cluster.start()
        try:
            await await_line(daemon, "session.found", timeout=15)
        finally:
            await cluster.stop()
        assert daemon.count("session_watch.unavailable") == 0


async def test_temp_root_created_later_is_watched_too(
    endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """No /tmp/ray yet when the daemon starts: its creation, then the session, are noticed."""
    temp_root.rmdir()
    env = daemon_env(temp_root, state_dir, endpoint.url, RAY_USAGE_STATS_REPORT_INTERVAL_S=HOUR)
    with running_daemon(env) as daemon:
        await await_line(daemon, "session.missing")
        cluster = DemoCluster(make_session_dir(temp_root), recorded_responses())
        await cluster.start()
        try:
            await await_line(daemon, "session.found", timeout=15)
        finally:
            await cluster.stop()


async def test_routed_first_report_follows_rays_first(
    endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """Routed: when Ray's first report reaches the intake, ours goes out right after it."""
    env = daemon_env(
        temp_root,
        state_dir,
        endpoint.url,
        RAY_USAGE_STATS_REPORT_INTERVAL_S=HOUR,
        USAGESTATSD_RAY_INTAKE="127.0.0.1:0",
    )
    with running_daemon(env) as daemon:
        url = json.loads(await await_line(daemon, "beside_ray.intake_listening"))["url"]
        start_ms = int(time.time() * 1000)
        responses = recorded_responses()
        metadata = recorded_json("dash_report_cluster_metadata.json")
        metadata["data"]["sessionStartTimestampMs"] = start_ms
        responses["dash_ReportHead"]["/api/v0/cluster_metadata"] = json.dumps(metadata).encode()
        cluster = DemoCluster(make_session_dir(temp_root), responses)
        await cluster.start()
        try:
            await await_line(daemon, "session.found", timeout=15)
            ray_body = json.dumps({"session_start_timestamp_ms": start_ms, "seq_number": 0})
            async with aiohttp.ClientSession() as http, http.post(url, data=ray_body) as resp:
                assert resp.status == 200
            # The schedule alone would send it 60 s after the session was found.
            await until(lambda: len(endpoint.received) >= 1, 20)
        finally:
            await cluster.stop()
    assert endpoint.bodies()[0]["seq_number"] == 0
