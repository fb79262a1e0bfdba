"""Beside Ray's own reporter: routed through the intake, or standing down when it sends."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.support.poll import until
from tests.support.processes import await_line, daemon_env, intake_env, running_daemon
from tests.support.rayside import ray_report, ray_style_copy, recorded_json, session_started_now
from tests.support.servers import ScriptedEndpoint
from usagestatsd.cycle.beside_ray import (
    REWRITE_DELAY_S,
    Arrangement,
    BesideRay,
    Neighbour,
    RaySighting,
    classify,
    digest,
)
from usagestatsd.demo import DemoCluster
from usagestatsd.facts.session import find_session, trusted_uids, write_usage_stats

START_MS = recorded_json("dash_report_cluster_metadata.json")["data"]["sessionStartTimestampMs"]


def test_a_sighting_before_the_session_switch_still_counts() -> None:
    """Ray's first report of a new session reaching the intake before the daemon follows the
    session keeps that session routed (seen once on Ray 2.9.3 after a cluster restart)."""
    neighbour = Neighbour("auto")
    neighbour.saw(RaySighting(received_ms=2_000, session_start_ms=1_000, seq_number=0))
    neighbour.new_session(None)
    ray_copy = json.dumps({"usage_stats": {"seq_number": 0}, "success": True}).encode()
    assert neighbour.arrangement(1_000, ray_copy) is Arrangement.ROUTED
    assert neighbour.arrangement(5_000, ray_copy) is Arrangement.DIRECT  # another session's


def test_classify() -> None:
    """Routed beats everything; a foreign local copy means Ray sends directly."""
    ours = b'{"usage_stats": {}, "success": true, "error": null}'
    sighting = RaySighting(1, START_MS, 0)
    assert classify(START_MS, [sighting], ray_style_copy(0), set()) is Arrangement.ROUTED
    assert classify(START_MS, [], ray_style_copy(0), {digest(ours)}) is Arrangement.DIRECT
    assert classify(START_MS, [], ours, {digest(ours)}) is Arrangement.UNKNOWN
    assert classify(START_MS, [], None, set()) is Arrangement.UNKNOWN
    other = RaySighting(1, START_MS + 1, 0)  # a report about another session
    assert classify(START_MS, [other], None, set()) is Arrangement.UNKNOWN


async def test_ray_sending_directly_makes_us_stand_down(
    demo_session: DemoCluster, endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """Ray's reporter wrote usage_stats.json and nothing came to the intake: no report sent."""
    (demo_session.session_dir / "usage_stats.json").write_bytes(ray_style_copy(3))
    env = intake_env(temp_root, state_dir, endpoint.url)
    with running_daemon(env) as daemon:
        line = await await_line(daemon, "beside_ray.standing_down")
        await until(lambda: daemon.count("beside_ray.standing_down") == 1)
        assert "RAY_USAGE_STATS_REPORT_URL=http://127.0.0.1:" in line
        status = subprocess.run(
            [sys.executable, "-m", "usagestatsd", "status", "--json", "--config", "/dev/null"],
            env={**env, "RAY_USAGE_STATS_ENABLED": "1"},
            capture_output=True,
            text=True,
        )
    assert endpoint.received == []
    assert (demo_session.session_dir / "usage_stats.json").read_bytes() == ray_style_copy(3)
    info = json.loads(status.stdout)
    assert info["beside_ray"]["arrangement"] == "direct"


async def test_report_mode_reports_even_beside_ray(
    demo_session: DemoCluster, endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """beside_ray = report: the operator says destinations differ, so usagestatsd reports."""
    (demo_session.session_dir / "usage_stats.json").write_bytes(ray_style_copy(3))
    env = daemon_env(temp_root, state_dir, endpoint.url, USAGESTATSD_BESIDE_RAY="report")
    with running_daemon(env):
        await until(lambda: len(endpoint.received) >= 1)


async def test_routed_through_intake(
    demo_session: DemoCluster, endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """Ray's reporter POSTs to the intake: accepted, not forwarded; only we report upstream."""
    env = intake_env(temp_root, state_dir, endpoint.url, RAY_USAGE_STATS_REPORT_INTERVAL_S="1")
    copy = demo_session.session_dir / "usage_stats.json"
    with running_daemon(env) as daemon:
        line = await await_line(daemon, "beside_ray.intake_listening")
        url = json.loads(line)["url"]
        await until(lambda: len(endpoint.received) >= 1)
        ray_body = ray_report(0)
        async with aiohttp.ClientSession() as http, http.post(url, data=ray_body) as resp:
            assert resp.status == 200
        copy.write_bytes(ray_style_copy(0))  # what Ray does right after its POST returns
        await await_line(daemon, "beside_ray.report_absorbed")
        seen = len(endpoint.received)
        await until(lambda: len(endpoint.received) >= seen + 2)
        await until(
            lambda: (
                json.loads(copy.read_bytes())["usage_stats"]["source"] == "OSS"
                and copy.read_bytes() != ray_style_copy(0)
            )
        )
        assert daemon.count("beside_ray.standing_down") == 0
    # Ray's body was absorbed, never forwarded: every upstream report is our own.
    assert all(b["seq_number"] == i for i, b in enumerate(endpoint.bodies()))
    assert all(body != ray_body for _, body, _ in endpoint.received)


async def test_grace_ends_when_ray_reports_to_the_intake(
    endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """A fresh session waits for Ray's first report, and stops waiting as soon as it comes."""
    import time

    cluster, start_ms = session_started_now(temp_root)
    await cluster.start()
    env = intake_env(temp_root, state_dir, endpoint.url, RAY_USAGE_STATS_REPORT_INTERVAL_S="1")
    try:
        with running_daemon(env) as daemon:
            url = json.loads(await await_line(daemon, "beside_ray.intake_listening"))["url"]
            await await_line(daemon, "beside_ray.waiting")
            assert endpoint.received == []
            ray_body = json.dumps({"session_start_timestamp_ms": start_ms, "seq_number": 0})
            async with aiohttp.ClientSession() as http, http.post(url, data=ray_body) as resp:
                assert resp.status == 200
            await until(lambda: len(endpoint.received) >= 1, 20)  # not the full 75 s
    finally:
        await cluster.stop()
    assert time.time() * 1000 - start_ms < 60_000


async def test_a_restart_keeps_the_session_routed(
    demo_session: DemoCluster, endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """Routed once, routed for the whole session (Ray reads RAY_USAGE_STATS_REPORT_URL at its
    start). Restarted after Ray's own write of usage_stats.json came last, and before Ray's
    next report (an hour later), the daemon reports on: it does not take Ray's copy for Ray
    sending directly (seen in the journey, where an opt-out and back meant no report)."""
    env = intake_env(temp_root, state_dir, endpoint.url, RAY_USAGE_STATS_REPORT_INTERVAL_S="1")
    copy = demo_session.session_dir / "usage_stats.json"
    with running_daemon(env) as daemon:
        url = json.loads(await await_line(daemon, "beside_ray.intake_listening"))["url"]
        async with aiohttp.ClientSession() as http, http.post(url, data=ray_report(0)) as resp:
            assert resp.status == 200
        await until(lambda: len(endpoint.received) >= 1)
    copy.write_bytes(ray_style_copy(0))  # Ray's write, after ours, before the restart
    reported = len(endpoint.received)
    with running_daemon(env) as daemon:
        await until(lambda: len(endpoint.received) >= reported + 2)
        assert daemon.count("beside_ray.standing_down") == 0
    assert [b["seq_number"] for b in endpoint.bodies()] == list(range(len(endpoint.received)))


async def test_our_copy_is_put_back_when_rays_write_comes_after_ours(
    demo_session: DemoCluster, temp_root: Path
) -> None:
    """Our first report follows Ray's POST to the intake at once, so Ray's own write of
    usage_stats.json (right after its POST returns) can land after ours: the file still ends
    up holding what usagestatsd sent."""
    import asyncio

    session = find_session(temp_root, trusted_uids()).session
    assert session is not None
    beside = BesideRay("auto", lambda: session)
    beside.new_session(None, None, False)
    beside.saw(RaySighting(1, START_MS, 0))  # Ray's report, before our first one
    ours = b'{"usage_stats": {"source": "OSS"}, "success": true, "error": null}'
    write_usage_stats(session, ours)
    beside.wrote(ours)
    session.usage_stats_path.write_bytes(ray_style_copy(0))  # Ray's write, just after ours
    await asyncio.sleep(REWRITE_DELAY_S + 0.5)
    assert session.usage_stats_path.read_bytes() == ours
