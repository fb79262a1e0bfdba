"""An IPv6 address is written [::1]:PORT wherever the daemon shows one, never ::1:PORT."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest

from tests.support.processes import await_line, daemon_env, run_cli, running_daemon
from tests.support.servers import ScriptedEndpoint


async def status_once_ready(env: dict[str, str]) -> str:
    """`status`, as an operator runs it, once it shows the service's status line."""
    mine = {k: v for k, v in env.items() if k in ("USAGESTATSD_STATE_DIR", "HOME")}
    for _ in range(200):
        _, text, _ = await run_cli(["status", "--config", "/dev/null"], mine)
        if "its status:" in text:
            return text
        await asyncio.sleep(0.1)
    raise AssertionError(f"status never showed the service's status line:\n{text}")


def ready_status(notify: socket.socket) -> str:
    """The STATUS= sent with READY=1 (the daemon has sent it before `status` shows it)."""
    notify.setblocking(False)
    while True:
        message = notify.recv(4096).decode()
        if "READY=1" in message.splitlines():
            return next(line for line in message.splitlines() if line.startswith("STATUS="))


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback")
async def test_an_ipv6_intake_that_cannot_listen_is_shown_in_brackets(
    endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """No Ray yet, and the intake's port on ::1 is taken: the log, the service's status line
    and `status` all name [::1]:PORT."""
    taken = socket.socket(socket.AF_INET6)
    taken.bind(("::1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(temp_root.parent / "notify"))
    env = daemon_env(
        temp_root,
        state_dir,
        endpoint.url,
        USAGESTATSD_RAY_INTAKE=f"[::1]:{port}",
        NOTIFY_SOCKET=str(temp_root.parent / "notify"),
    )
    try:
        with running_daemon(env) as daemon:
            logged = json.loads(await await_line(daemon, "beside_ray.intake_unavailable"))
            text = await status_once_ready(env)
            ready = ready_status(notify)
    finally:
        taken.close()
        notify.close()
    assert logged["address"] == f"[::1]:{port}"
    assert f"intake [::1]:{port} is NOT listening" in text
    assert f"(intake [::1]:{port} not listening" in ready
    assert f" ::1:{port}" not in text


async def test_status_before_any_service_names_the_asked_ipv6_intake_in_brackets(
    state_dir: Path,
) -> None:
    """No service has run with this state directory: `status` shows the intake the
    settings ask for as [::1]:PORT."""
    env = {"USAGESTATSD_STATE_DIR": str(state_dir), "USAGESTATSD_RAY_INTAKE": "[::1]:18922"}
    _, text, _ = await run_cli(["status", "--config", "/dev/null"], env)
    assert "[::1]:18922" in text, text
    assert " ::1:18922" not in text, text
