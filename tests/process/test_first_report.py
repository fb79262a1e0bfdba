"""The first report comes soon: a new session is noticed when it appears (inotify), and in
the routed arrangement our first report follows Ray's first one at once."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from tests.support.poll import until
from tests.support.processes import DaemonProcess, await_line, daemon_env, running_daemon
from tests.support.rayside import session_started_now
from tests.support.servers import ScriptedEndpoint
from usagestatsd.demo import DemoCluster, make_session_dir, recorded_responses

HOUR = "3600"  # so that neither the schedule nor the tick (60 s) can explain a quick result


async def found_when_ray_starts(temp_root: Path, state_dir: Path, url: str) -> DaemonProcess:
    """A daemon started before Ray: it finds the session within 15 s of Ray's start (the
    daemon, stopped again, with its log)."""
    env = daemon_env(temp_root, state_dir, url, RAY_USAGE_STATS_REPORT_INTERVAL_S=HOUR)
    with running_daemon(env) as daemon:
        await await_line(daemon, "session.missing")
        cluster = DemoCluster(make_session_dir(temp_root), recorded_responses())
        await cluster.start()
        try:
            await await_line(daemon, "session.found", timeout=15)
        finally:
            await cluster.stop()
    return daemon


async def test_new_session_noticed_at_once(
    endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """Ray starts after the daemon: the session is found within seconds, not at the tick."""
    daemon = await found_when_ray_starts(temp_root, state_dir, endpoint.url)
    assert daemon.count("session_watch.unavailable") == 0


async def test_temp_root_created_later_is_watched_too(
    endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """No /tmp/ray yet when the daemon starts: its creation, then the session, are noticed."""
    temp_root.rmdir()
    await found_when_ray_starts(temp_root, state_dir, endpoint.url)


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
        cluster, start_ms = session_started_now(temp_root)
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
