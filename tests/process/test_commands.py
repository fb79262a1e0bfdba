"""The commands as a user runs them: exit codes, messages, files, and disabled silence."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from tests.support.poll import until
from tests.support.processes import (
    await_line,
    await_looks,
    consent_file_env,
    daemon_env,
    run_cli,
    running_daemon,
)
from tests.support.servers import RawUnixServer, ScriptedEndpoint
from usagestatsd.cli.commands import build_parser
from usagestatsd.config.settings import setting_flags
from usagestatsd.contract.fieldsets import CURRENT_VERSION
from usagestatsd.demo import DemoCluster, make_session_dir, recorded_responses


def usagestatsd(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run the real command line."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "USAGESTATSD_"))}
    base.pop("DO_NOT_TRACK", None)
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "usagestatsd", *args],
        env=base,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_version() -> None:
    """--version prints the version and exits 0."""
    result = usagestatsd("--version")
    assert result.returncode == 0 and result.stdout.startswith("usagestatsd 1.")


def test_invalid_setting_exits_78_with_one_message(empty_settings_file: Path) -> None:
    """A bad value stops start-up with EX_CONFIG and one line naming it."""
    result = usagestatsd(
        "run",
        "--config",
        str(empty_settings_file),
        env={"RAY_USAGE_STATS_REPORT_INTERVAL_S": "soon"},
    )
    assert result.returncode == 78
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "RAY_USAGE_STATS_REPORT_INTERVAL_S" in lines[0] and "'soon'" in lines[0]


def test_bad_flag_value_names_the_flag_typed(empty_settings_file: Path) -> None:
    """A bad --interval or --endpoint exits 78 naming that flag, not the setting's name."""
    interval = usagestatsd("run", "--config", str(empty_settings_file), "--interval", "0")
    assert interval.returncode == 78
    assert "from command line --interval:" in interval.stderr
    assert "report-interval" not in interval.stderr
    endpoint = usagestatsd(
        "run", "--config", str(empty_settings_file), "--endpoint", "ftp://example.invalid/"
    )
    assert endpoint.returncode == 78
    assert "from command line --endpoint:" in endpoint.stderr
    assert "--endpoints" not in endpoint.stderr


def test_every_declared_flag_is_a_real_flag_of_run() -> None:
    """The flags config/settings.py names in its messages are the ones `run` accepts."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    run_flags = {s for a in commands.choices["run"]._actions for s in a.option_strings}
    declared = setting_flags()
    assert declared, "no setting declares a command-line flag"
    assert set(declared.values()) <= run_flags


def test_disable_then_enable_keep_other_keys(tmp_path: Path, empty_settings_file: Path) -> None:
    """disable/enable write the consent file atomically, keep other keys, say to restart."""
    consent = tmp_path / "home" / ".ray" / "config.json"
    env = {"HOME": str(tmp_path / "home")}
    result = usagestatsd("disable", "--config", str(empty_settings_file), env=env)
    assert result.returncode == 0 and "restart" in result.stdout
    assert json.loads(consent.read_text()) == {"usage_stats": False}
    consent.write_text('{"usage_stats": false, "keep": [1]}')
    assert usagestatsd("enable", "--config", str(empty_settings_file), env=env).returncode == 0
    assert json.loads(consent.read_text()) == {
        "usage_stats": True,
        "keep": [1],
        "usage_stats_fields_version": CURRENT_VERSION,
    }


def test_disable_refuses_broken_file(tmp_path: Path, empty_settings_file: Path) -> None:
    """A consent file that is not a JSON object is left untouched, exit non-zero."""
    consent = tmp_path / "c.json"
    consent.write_text("{oops")
    result = usagestatsd(
        "disable",
        "--config",
        str(empty_settings_file),
        env={"RAY_USAGE_STATS_CONFIG_PATH": str(consent)},
    )
    assert result.returncode != 0 and "untouched" in result.stderr
    assert consent.read_text() == "{oops"


def test_status_json(tmp_path: Path, empty_settings_file: Path, temp_root: Path) -> None:
    """status --json: decision, deciding layer, sources consulted; exit 3 when disabled."""
    make_session_dir(temp_root)
    env = {
        "RAY_USAGE_STATS_ENABLED": "0",
        "USAGESTATSD_TEMP_ROOT": str(temp_root),
        "USAGESTATSD_STATE_DIR": str(tmp_path / "state"),
        "HOME": str(tmp_path),
    }
    result = usagestatsd("status", "--json", "--config", str(empty_settings_file), env=env)
    assert result.returncode == 3
    info = json.loads(result.stdout)
    assert info["enabled"] is False
    assert info["decided_by"]["layer"] == "RAY_USAGE_STATS_ENABLED"
    assert {c["layer"] for c in info["consulted"]} >= {"DO_NOT_TRACK", "config file"}
    assert info["session"]["provider"] == "absent"
    human = usagestatsd("status", "--config", str(empty_settings_file), env=env)
    assert "disabled" in human.stdout and "RAY_USAGE_STATS_ENABLED" in human.stdout


async def test_preview_prints_the_report_and_sends_nothing(
    demo_session: DemoCluster,
    endpoint: ScriptedEndpoint,
    temp_root: Path,
    state_dir: Path,
    empty_settings_file: Path,
) -> None:
    """preview prints schema-0.1 JSON on stdout; no request, no file, no state."""
    env = daemon_env(temp_root, state_dir, endpoint.url)
    proc = await run_cli(["preview", "--config", str(empty_settings_file)], env)
    assert proc[0] == 0, proc[2]
    report = json.loads(proc[1])
    assert report["ray_version"] == "2.60.0" and report["seq_number"] == 0
    assert endpoint.received == []
    assert not (demo_session.session_dir / "usage_stats.json").exists()
    assert not state_dir.exists()


async def test_disabled_daemon_is_silent(
    temp_root: Path, state_dir: Path, empty_settings_file: Path
) -> None:
    """Disabled: exits 0 at once, one line naming the layer; no connection, no file, no state."""
    session = make_session_dir(temp_root)
    servers = [
        RawUnixServer(session / "sockets" / name, lambda conn: None)
        for name in ("dash_ReportHead", "dash_StateHead", "dash_JobHead")
    ]
    endpoint = ScriptedEndpoint()
    await endpoint.start()
    env = daemon_env(temp_root, state_dir, endpoint.url, RAY_USAGE_STATS_ENABLED="0")
    try:
        with running_daemon(env, settings_file=empty_settings_file) as daemon:
            await until(lambda: daemon.proc.poll() is not None, 15)
            assert daemon.proc.returncode == 0
            line = await await_line(daemon, "consent.disabled")
        await asyncio.sleep(0.3)  # let any late connection attempt show up
    finally:
        for server in servers:
            server.close()
        await endpoint.stop()
    assert "RAY_USAGE_STATS_ENABLED" in line
    assert sum(s.connections for s in servers) == 0
    assert endpoint.received == []
    assert sorted(p.name for p in session.iterdir()) == ["logs", "sockets"]
    assert not state_dir.exists()


async def test_cluster_with_usage_stats_disabled_is_skipped(
    endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """A session started with --disable-usage-stats is never reported; the next one is."""
    responses = recorded_responses()
    responses["dash_ReportHead"] = {
        "/api/v0/cluster_metadata": json.dumps(
            {
                "result": True,
                "msg": "",
                "data": {
                    "rayVersion": "2.60.0",
                    "pythonVersion": "3.11.2",
                    "rayInitCluster": False,
                },
            }
        ).encode()
    }
    off = DemoCluster(make_session_dir(temp_root), responses)
    await off.start()
    try:
        env = daemon_env(temp_root, state_dir, endpoint.url, USAGESTATSD_LOG_LEVEL="debug")
        with running_daemon(env) as daemon:
            line = await await_line(daemon, "session.not_reported")
            assert "disabled" in line
            await await_looks(daemon, 3)  # several report intervals pass: nothing is sent
            assert endpoint.received == []
            on = DemoCluster(make_session_dir(temp_root, time.time() + 5), recorded_responses())
            await on.start()
            try:
                await until(lambda: len(endpoint.received) >= 1)
            finally:
                await on.stop()
            assert daemon.count("session.not_reported") == 1
    finally:
        await off.stop()
    assert not (off.session_dir / "usage_stats.json").exists()
    assert endpoint.bodies()[0]["seq_number"] == 0


async def test_config_flip_applies_only_after_restart(
    demo_session: DemoCluster,
    endpoint: ScriptedEndpoint,
    temp_root: Path,
    state_dir: Path,
    tmp_path: Path,
) -> None:
    """Consent is read once: a running daemon keeps reporting; a restarted one exits silently."""
    consent = tmp_path / "consent.json"
    env = consent_file_env(temp_root, state_dir, endpoint.url, consent, '{"usage_stats": true}')
    with running_daemon(env) as daemon:
        await until(lambda: len(endpoint.received) >= 1)
        consent.write_text('{"usage_stats": false}')
        seen = len(endpoint.received)
        await until(lambda: len(endpoint.received) >= seen + 2)
        assert daemon.proc.poll() is None
    seen = len(endpoint.received)
    with running_daemon(env) as daemon:
        await until(lambda: daemon.proc.poll() is not None, 15)
        assert daemon.proc.returncode == 0
        line = await await_line(daemon, "consent.disabled")
    assert str(consent) in line
    assert len(endpoint.received) == seen


def _prompt_session(
    env_extra: dict[str, str], tmp_path: Path, settings: Path, typed: list[tuple[float, bytes]]
) -> tuple[float, str, Path]:
    """Run `usagestatsd run` on a real pseudo-terminal, typing lines at given delays."""
    consent = tmp_path / "consent.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "USAGESTATSD_"))}
    env.pop("DO_NOT_TRACK", None)
    env.update(
        {
            "RAY_USAGE_STATS_CONFIG_PATH": str(consent),
            "USAGESTATSD_TEMP_ROOT": str(tmp_path / "nothing"),
            "USAGESTATSD_STATE_DIR": str(tmp_path / "state"),
            **env_extra,
        }
    )
    pid, fd = pty.fork()
    if pid == 0:  # child: the daemon on the terminal
        os.execve(
            sys.executable,
            [
                sys.executable,
                "-m",
                "usagestatsd",
                "run",
                "--config",
                str(settings),
                "--log-format",
                "json",
            ],
            env,
        )
    started = time.monotonic()
    output = b""
    pending = list(typed)
    prompted_at = None
    while time.monotonic() - started < 25:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            try:
                output += os.read(fd, 4096)
            except OSError:
                break
        if prompted_at is None and b"Confirm [Y/n]" in output:
            prompted_at = time.monotonic()
        if prompted_at is not None and pending and time.monotonic() - prompted_at >= pending[0][0]:
            os.write(fd, pending.pop(0)[1])
        if b"daemon.started" in output or b"consent.disabled" in output:
            break
    elapsed = time.monotonic() - (prompted_at or started)
    os.kill(pid, 15)
    os.waitpid(pid, 0)
    os.close(fd)
    return elapsed, output.decode(errors="replace"), consent


def test_prompt_yes_saves_once(tmp_path: Path, empty_settings_file: Path) -> None:
    """Answering y enables, saves true to the consent file; the next start does not ask."""
    _, out, consent = _prompt_session({}, tmp_path, empty_settings_file, [(0.2, b"y\n")])
    assert "Confirm [Y/n]" in out and "consent.enabled" in out
    assert json.loads(consent.read_text())["usage_stats"] is True
    _, again, _ = _prompt_session({}, tmp_path, empty_settings_file, [])
    assert "Confirm" not in again and "config file" in again


def test_prompt_no(tmp_path: Path, empty_settings_file: Path) -> None:
    """Answering n disables and saves false."""
    _, out, consent = _prompt_session({}, tmp_path, empty_settings_file, [(0.2, b"n\n")])
    assert "consent.disabled" in out
    assert json.loads(consent.read_text()) == {"usage_stats": False}


def test_prompt_disabled_by_env(tmp_path: Path, empty_settings_file: Path) -> None:
    """RAY_USAGE_STATS_PROMPT_ENABLED=0: no prompt on a terminal, default notice, nothing saved."""
    _, out, consent = _prompt_session(
        {"RAY_USAGE_STATS_PROMPT_ENABLED": "0"}, tmp_path, empty_settings_file, []
    )
    assert "Confirm" not in out and "consent.default_enabled" in out
    assert not consent.exists()
