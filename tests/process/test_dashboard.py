"""The dashboard over TCP (Ray before 2.47): found without configuration, and never trusted
by its port: real processes, real loopback servers, a real unprivileged neighbour."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.hostile import NOBODY, needs_root, running_as
from tests.support.processes import await_line, daemon_env, run_cli, running_daemon
from tests.support.servers import ScriptedEndpoint
from usagestatsd.cycle.refusal import CANNOT_READ, NOT_RUNNING, RefusalKind, cluster_refusal
from usagestatsd.demo import make_session_dir
from usagestatsd.facts.cluster import gather
from usagestatsd.facts.fetch import Limits
from usagestatsd.facts.session import Session, find_session

REPO = Path(__file__).resolve().parents[2]
FAKE_DASHBOARD = REPO / "tests" / "support" / "fakes" / "ray" / "dashboard" / "dashboard.py"
DATA = REPO / "tests" / "data" / "ray-2.40.0"
FAST = Limits(timeout_s=2.0, max_bytes=1 << 20)


def session_of(temp_root: Path) -> Session:
    """The session the daemon would find."""
    found = find_session(temp_root).session
    assert found is not None
    return found


class Dashboards:
    """Stand-in dashboards (tests/support/fakes), each naming a session on its command line."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, session_dir: Path, port: int = 0, listen: bool = True) -> int:
        """Start one; returns the port it listens on (or was told, with listen=False)."""
        port = port or loopback_port()  # on its command line, as Ray's own has it
        args = [
            sys.executable,
            str(FAKE_DASHBOARD),
            "--host=127.0.0.1",
            f"--port={port}",
            f"--session-dir={session_dir}",
            f"--data={DATA}",
        ]
        if not listen:
            args.append("--no-listen")
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip(), "the stand-in dashboard did not start"
        return port

    def close(self) -> None:
        """Stop them all."""
        for proc in self.procs:
            proc.kill()
            proc.wait()


@pytest.fixture
def dashboards() -> Iterator[Dashboards]:
    """Dashboard processes, stopped after the test."""
    made = Dashboards()
    yield made
    made.close()


def loopback_port() -> int:
    """A port of 127.0.0.1 free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def impostor(port: int) -> Callable[[Callable[[str], None]], None]:
    """A child's body: answer every request on `port` with plausible dashboard replies."""
    metadata = (DATA / "dash_report_cluster_metadata.json").read_bytes()
    forged = json.loads(metadata)
    forged["data"]["rayVersion"] = "6.6.6"
    body = json.dumps(forged).encode()
    reply = b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    def serve(ready: Callable[[str], None]) -> None:
        # As nobody nothing more may be imported: plain sockets only.
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(8)
        ready("listening")
        while True:
            conn = s.accept()[0]
            conn.recv(65536)
            conn.sendall(reply)
            conn.close()

    return serve


async def test_the_sessions_dashboard_is_found_by_its_command_line(
    temp_root: Path, dashboards: Dashboards
) -> None:
    """No dash_* sockets, no setting: the dashboard's own --port is found and read."""
    session_dir = make_session_dir(temp_root)
    port = dashboards.start(session_dir)
    facts = await gather(session_of(temp_root), FAST)
    assert facts.problems == ()
    assert facts.metadata is not None and facts.metadata.ray_version == "2.40.0"
    assert facts.totals.total_num_cpus == 1 and facts.running_jobs == 1
    assert facts.origins is not None
    assert facts.origins.dashboard == (
        f"dashboard HTTP 127.0.0.1:{port} (the dashboard's command line)"
    )
    assert (facts.origins.metadata, facts.origins.resources) == ("dashboard HTTP",) * 2
    assert cluster_refusal(facts) is None


async def test_another_sessions_dashboard_never_supplies_facts(
    temp_root: Path, dashboards: Dashboards
) -> None:
    """A second cluster's dashboard (same uid, its own session) at the configured port."""
    make_session_dir(temp_root, when=1_700_000_000)
    other = make_session_dir(temp_root)  # the newest: session_latest now points here
    older = sorted(p for p in temp_root.iterdir() if p.name.startswith("session_2"))[0]
    (temp_root / "session_latest").unlink()
    (temp_root / "session_latest").symlink_to(older)
    port = dashboards.start(other)
    facts = await gather(session_of(temp_root), FAST, dashboard_address=("127.0.0.1", port))
    assert facts.metadata is None and facts.totals.total_num_cpus is None
    assert facts.running_jobs is None
    assert len(facts.problems) == 3
    for problem in facts.problems:
        assert f"is not served by the dashboard of {older.name}" in problem.problem


@needs_root
async def test_a_port_taken_first_by_another_user_never_supplies_facts(
    temp_root: Path, dashboards: Dashboards
) -> None:
    """nobody listens on the port Ray's dashboard was told to use: refused, one warning."""
    session_dir = make_session_dir(temp_root)
    port = loopback_port()
    with running_as(impostor(port)):
        # The real dashboard names that port but could not bind it.
        dashboards.start(session_dir, port=port, listen=False)
        facts = await gather(session_of(temp_root), FAST)
    assert facts.metadata is None
    assert all(f"is held by uid {NOBODY}" in p.problem for p in facts.problems)
    assert facts.session_running is True
    refusal = cluster_refusal(facts)
    assert refusal is not None and refusal.kind is RefusalKind.CANNOT_READ
    assert refusal.level == "warning" and refusal.message.startswith(CANNOT_READ)
    assert "Ray 2.40.0" in refusal.message  # read from the dashboard's install, not asked of it
    assert f"127.0.0.1:{port}" in refusal.message and "dashboard_address" in refusal.message


@needs_root
async def test_a_configured_address_is_checked_too(temp_root: Path) -> None:
    """dashboard_address pointing at nobody's server: refused the same way."""
    make_session_dir(temp_root)
    port = loopback_port()
    with running_as(impostor(port)):
        facts = await gather(session_of(temp_root), FAST, dashboard_address=("127.0.0.1", port))
    assert facts.metadata is None
    assert all(f"is held by uid {NOBODY}" in p.problem for p in facts.problems)


async def test_a_stopped_head_is_not_running(temp_root: Path) -> None:
    """No dashboard process, nothing listening: 'not running', with no warning per source."""
    make_session_dir(temp_root)
    facts = await gather(session_of(temp_root), FAST, dashboard_address=("127.0.0.1", 9))
    assert facts.session_running is False
    refusal = cluster_refusal(facts)
    assert refusal is not None and refusal.kind is RefusalKind.NOT_RUNNING
    assert refusal.level == "info" and refusal.message == NOT_RUNNING


async def test_daemon_reports_over_tcp_and_status_says_so(
    temp_root: Path,
    state_dir: Path,
    dashboards: Dashboards,
    endpoint: ScriptedEndpoint,
    empty_settings_file: Path,
) -> None:
    """The real daemon on a 2.40-shaped head: reports, and status names version and sources."""
    session_dir = make_session_dir(temp_root)
    port = dashboards.start(session_dir)
    env = daemon_env(temp_root, state_dir, endpoint.url, USAGESTATSD_BESIDE_RAY="report")
    with running_daemon(env, settings_file=empty_settings_file) as daemon:
        await await_line(daemon, "report.sent")
    body = endpoint.bodies()[0]
    assert body["ray_version"] == "2.40.0" and body["total_num_running_jobs"] == 1
    code, out, err = await run_cli(["status", "--json", "--config", str(empty_settings_file)], env)
    assert code == 0, err
    session = json.loads(out)["session"]
    assert session["ray_version"] == "2.40.0"
    assert session["facts_from"] == {
        "dashboard": f"dashboard HTTP 127.0.0.1:{port} (the dashboard's command line)",
        "metadata": "dashboard HTTP",
        "resources": "dashboard HTTP",
        "nodes": "dashboard HTTP",
        "running_jobs": "dashboard HTTP",
        "gcs": None,  # no provider here
    }
    code, out, _ = await run_cli(["status", "--config", str(empty_settings_file)], env)
    assert "Ray version:  2.40.0" in out
    assert "libraries, hardware, tags, id" in out and "nowhere (null)" in out
