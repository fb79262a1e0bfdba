"""`status` and the STATUS= line tell what the running service decided, and nothing else."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.notify import NotifySocket
from tests.support.poll import until
from tests.support.processes import (
    await_line,
    consent_file_env,
    daemon_env,
    intake_env,
    run_cli,
    running_daemon,
)
from tests.support.rayside import ray_style_copy
from tests.support.servers import ScriptedEndpoint
from usagestatsd.demo import DemoCluster


@pytest.fixture
def notify(temp_root: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(temp_root.parent / "notify")
    yield sock
    sock.sock.close()


async def status(env: dict[str, str]) -> tuple[int, dict[str, Any], str]:
    """`status --json` and `status`, as an operator runs them: without the service's env."""
    mine = {k: v for k, v in env.items() if k in ("USAGESTATSD_STATE_DIR", "HOME")}
    mine["USAGESTATSD_TEMP_ROOT"] = env["USAGESTATSD_TEMP_ROOT"]
    code, out, _ = await run_cli(["status", "--json", "--config", "/dev/null"], mine)
    _, text, _ = await run_cli(["status", "--config", "/dev/null"], mine)
    return code, json.loads(out), text


async def test_disabled_by_the_service_environment(
    demo_session: DemoCluster,
    endpoint: ScriptedEndpoint,
    temp_root: Path,
    state_dir: Path,
    notify: NotifySocket,
) -> None:
    """Environment=RAY_USAGE_STATS_ENABLED=0 (a drop-in): status says disabled, and by what."""
    state_dir.mkdir()  # systemd's StateDirectory=
    env = daemon_env(
        temp_root,
        state_dir,
        endpoint.url,
        RAY_USAGE_STATS_ENABLED="0",
        NOTIFY_SOCKET=str(notify.path),
    )
    with running_daemon(env) as daemon:
        assert daemon.proc.wait(20) == 0
    assert notify.statuses()[0] == "Disabled by RAY_USAGE_STATS_ENABLED=0; not collecting"
    code, info, text = await status(env)
    assert code == 3 and info["enabled"] is False
    assert info["decided_by"]["layer"] == "RAY_USAGE_STATS_ENABLED"
    assert info["service"]["state"] == "exited at start: collection disabled"
    assert info["after_restart"]["changes"] == [] and info["next_report"] is None
    assert "Next report:    none (the service is not running)" in text
    assert endpoint.received == []


async def test_disable_then_restart(
    demo_session: DemoCluster, endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """After `disable`: the running daemon still reports, and status says so and what a
    restart changes; after the restart: disabled, and no next report is shown."""
    consent = temp_root.parent / "consent.json"
    env = consent_file_env(temp_root, state_dir, endpoint.url, consent, '{"usage_stats": true}')
    env["RAY_USAGE_STATS_REPORT_INTERVAL_S"] = "3"
    with running_daemon(env) as daemon:
        await until(lambda: len(endpoint.received) >= 1)
        await await_line(daemon, "report.sent")
        code, _, _ = await run_cli(["disable", "--config", "/dev/null"], env)
        assert code == 0
        code, info, text = await status(env)
        assert code == 0 and info["enabled"] is True
        assert info["service"]["running"] is True and info["next_report"] is not None
        assert info["after_restart"]["enabled"] is False
        assert any(c.startswith("collection: disabled") for c in info["after_restart"]["changes"])
        assert "a restart ('systemctl restart usagestatsd') would change:" in text
        assert daemon.stop() == 0
    code, info, text = await status(env)
    assert code == 3 and info["next_report"] is None
    assert info["service"]["state"] == "stopped"
    with running_daemon(env) as daemon:  # the restart
        assert daemon.proc.wait(20) == 0
    code, info, text = await status(env)
    assert code == 3 and info["enabled"] is False and info["next_report"] is None
    assert "Next report:    none" in text and "consent.json" in info["decided_by"]["where"]


async def test_standing_down_after_a_report_shows_in_both_views(
    demo_session: DemoCluster,
    endpoint: ScriptedEndpoint,
    temp_root: Path,
    state_dir: Path,
    notify: NotifySocket,
) -> None:
    """Reported once, then Ray's own reporter writes the copy: STATUS= and status say
    'Standing down' (never 'Last report ... ok'), with the fix; no next report."""
    env = intake_env(temp_root, state_dir, endpoint.url, NOTIFY_SOCKET=str(notify.path))
    with running_daemon(env) as daemon:
        await until(lambda: len(endpoint.received) >= 1)
        await await_line(daemon, "report.sent")
        copy = demo_session.session_dir / "usage_stats.json"

        def ray_writes_its_copy() -> bool:
            # Ray's reporter rewrites it after each of its reports: a cycle of ours that was
            # already running may have put its own back; write again until it is seen.
            if daemon.count("beside_ray.standing_down"):
                return True
            copy.write_bytes(ray_style_copy(7))
            return False

        await until(ray_writes_its_copy)
        await until(lambda: notify.statuses()[-1].startswith("Standing down"))
        assert "RAY_USAGE_STATS_REPORT_URL=http://127.0.0.1:" in notify.statuses()[-1]
        code, info, text = await status(env)
        assert code == 0 and info["standing_down"] and info["next_report"] is None
        assert info["service"]["status_line"].startswith("Standing down")
        assert "Next report:    none (standing down" in text
        await asyncio.sleep(1.5)  # more cycles (interval 0.5 s): the line stays
        assert notify.statuses()[-1].startswith("Standing down")


async def test_intake_port_taken_means_no_routing_advice(
    demo_session: DemoCluster,
    endpoint: ScriptedEndpoint,
    temp_root: Path,
    state_dir: Path,
    notify: NotifySocket,
) -> None:
    """The intake's port is in use: status says so, and never tells to route Ray there."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        env = daemon_env(
            temp_root,
            state_dir,
            endpoint.url,
            USAGESTATSD_RAY_INTAKE=f"127.0.0.1:{port}",
            NOTIFY_SOCKET=str(notify.path),
        )
        with running_daemon(env) as daemon:
            await await_line(daemon, "beside_ray.intake_unavailable")
            await until(lambda: len(endpoint.received) >= 1)
            _, info, text = await status(env)
    finally:
        taken.close()
    assert "not listening" in notify.statuses()[0]
    assert info["beside_ray"]["intake_listening"] is False
    assert "in use" in info["beside_ray"]["intake_problem"]
    assert "RAY_USAGE_STATS_REPORT_URL" not in text
    assert f"intake 127.0.0.1:{port} is NOT listening" in text


async def test_an_ipv6_intake_is_shown_in_brackets(
    demo_session: DemoCluster,
    endpoint: ScriptedEndpoint,
    temp_root: Path,
    state_dir: Path,
    tmp_path: Path,
) -> None:
    """An intake on ::1: the URL to give Ray, and the address in what a restart changes,
    are written [::1]:PORT, never ::1:PORT."""
    settings_file = tmp_path / "usagestatsd.toml"
    settings_file.write_text('ray_intake = "[::1]:0"\n')
    env = daemon_env(temp_root, state_dir, endpoint.url)
    del env["USAGESTATSD_RAY_INTAKE"]  # from the settings file, which is then edited
    with running_daemon(env, settings_file=settings_file) as daemon:
        await await_line(daemon, "beside_ray.intake_listening")
        await until(lambda: len(endpoint.received) >= 1)
        settings_file.write_text('ray_intake = "[::1]:18922"\n')
        _, info, text = await status(env)
    assert info["beside_ray"]["intake"].startswith("http://[::1]:")
    assert "RAY_USAGE_STATS_REPORT_URL=http://[::1]:" in text
    assert "intake: [::1]:18922 (now: [::1]:0)" in info["after_restart"]["changes"]
    assert "intake: [::1]:18922 (now: [::1]:0)" in text
    assert "http://::1" not in text and " ::1:" not in text


async def test_after_a_restart_status_shows_the_first_report_not_the_last_runs_plan(
    demo_session: DemoCluster,
    endpoint: ScriptedEndpoint,
    temp_root: Path,
    state_dir: Path,
    notify: NotifySocket,
) -> None:
    """The last run planned a report in 50 minutes (state.json then held it); the service
    restarted plans its first a minute on: status shows that one, the one STATUS= names."""
    state_dir.mkdir()
    last_runs_plan = time.time() + 50 * 60
    (state_dir / "state.json").write_text(
        json.dumps(
            {
                "format": 1,
                "last_report": None,
                "next_report_ms": int(last_runs_plan * 1000),
                "origins": None,
                "session": None,
            }
        )
    )
    env = daemon_env(
        temp_root,
        state_dir,
        endpoint.url,
        RAY_USAGE_STATS_REPORT_INTERVAL_S="3600",
        NOTIFY_SOCKET=str(notify.path),
    )
    with running_daemon(env) as daemon:
        await await_line(daemon, "session.found")
        await until(lambda: any(" found; first report " in s for s in notify.statuses()))
        code, info, text = await status(env)
        assert daemon.stop() == 0
    [found] = [s for s in notify.statuses() if " found; first report " in s]
    first = found.rpartition(" ")[2]  # HH:MM:SS
    assert code == 0 and info["next_report"] is not None
    assert first in info["next_report"], (found, info["next_report"])
    assert f"Next report:    {info['next_report']}" in text
    assert time.strftime("%H:%M:%S", time.localtime(last_runs_plan)) not in text
