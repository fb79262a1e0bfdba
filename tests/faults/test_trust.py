"""The cluster side's trust attacks: another local user serves Ray's sockets.

Each attack runs as the real unprivileged uid `nobody` in a forked child (tests/support/hostile.py)
against Ray-like directories made as Ray makes them (0777, no sticky bit), while the
daemon's own code runs here as root. docs/security.md lists each row with its test.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.helpers import named, responses_with, run_cycles
from tests.support.hostile import NOBODY, as_user, needs_root, open_dir, running_as
from tests.support.poll import until
from tests.support.processes import await_line, await_looks, daemon_env, running_daemon
from tests.support.servers import ScriptedEndpoint
from usagestatsd.config.settings import Settings
from usagestatsd.demo import DemoCluster, make_session_dir, recorded

pytestmark = needs_root

FORGED_ID = "ab" * 28
FORGED_PROVIDER = json.dumps(
    {
        "protocol_version": 1,
        "cluster_id": FORGED_ID,
        "library_usages": ["core"],
        "extra_usage_tags": {"injected_by": "nobody"},
        "hardware_usages": [],
        "total_num_nodes": 5_000_000,
        "total_num_running_jobs": 77,
    }
).encode()
# What a cluster started with --disable-usage-stats answers (docs/ray-2.60-findings.md)...
DISABLED_METADATA = (
    b'{"result": true, "msg": "", "data": {"rayVersion": "2.60.0", '
    b'"pythonVersion": "3.11.2", "rayInitCluster": false}}'
)
# ...and what an impostor answers instead, to get it reported.
ENABLED_METADATA = recorded("dash_report_cluster_metadata.json")

Serve = Callable[[Callable[[str], None]], None]


def fake_dashboard(path: Path, body: bytes, move_away: Path | None = None) -> Serve:
    """The attacker's body (as nobody): bind `path`, answer every request with `body`.

    With `move_away`, Ray's own socket at `path` is first renamed there (Ray's sockets/
    is 0777 without the sticky bit, so any user may). Only the stdlib modules already
    imported are used: nothing can be imported as nobody.
    """

    def serve(ready: Callable[[str], None]) -> None:
        if move_away is not None:
            os.rename(path, move_away)
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.listen(64)
        ready("listening")
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
        reply = head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        while True:
            conn, _ = server.accept()
            try:
                conn.settimeout(2)
                request = b""
                while b"\r\n\r\n" not in request and len(request) < 65536:
                    piece = conn.recv(4096)
                    if not piece:
                        break
                    request += piece
                conn.sendall(reply)
            except OSError:
                pass
            finally:
                conn.close()

    return serve


def open_like_ray(temp_root: Path, session_dir: Path) -> None:
    """Ray's modes: temp root, session and sockets/ 0777 without sticky bit (reachable)."""
    temp_root.parent.chmod(0o755)
    for path in (temp_root, session_dir, session_dir / "sockets"):
        path.chmod(0o777)


@pytest.fixture
async def ray_session(temp_root: Path) -> AsyncIterator[DemoCluster]:
    """A root-served demo session (Ray 2.60's recorded answers) in Ray-mode directories."""
    session_dir = make_session_dir(temp_root)
    cluster = DemoCluster(session_dir, responses_with())
    await cluster.start()
    open_like_ray(temp_root, session_dir)
    yield cluster
    await cluster.stop()


def problems_of(events: list[object], prefix: str) -> list[str]:
    """The `cluster.source_failed` problems whose source starts with `prefix`."""
    return [
        str(e["problem"])
        for e in named(events, "cluster.source_failed")  # type: ignore[arg-type]
        if str(e["source"]).startswith(prefix)
    ]


async def test_row1_provider_socket_bound_by_another_user_is_refused(
    make_settings: Callable[..., Settings],
    endpoint: ScriptedEndpoint,
    ray_session: DemoCluster,
) -> None:
    """nobody binds usagestatsd_provider with forged facts; none reach the report."""
    path = ray_session.session_dir / "sockets" / "usagestatsd_provider"
    settings = make_settings({"RAY_USAGE_STATS_REPORT_URL": endpoint.url})
    with running_as(fake_dashboard(path, FORGED_PROVIDER)):
        _, events = await run_cycles(settings)
    [body] = endpoint.bodies()  # the real cluster is still reported
    assert body["total_num_nodes"] != 5_000_000
    assert body["session_id"] != FORGED_ID
    assert "injected_by" not in (body["extra_usage_tags"] or {})
    [problem] = problems_of(events, "usagestatsd_provider")  # type: ignore[arg-type]
    assert f"served by uid {NOBODY}" in problem


async def test_row2_dashboard_socket_replaced_by_another_user_is_refused(
    make_settings: Callable[..., Settings], endpoint: ScriptedEndpoint, temp_root: Path
) -> None:
    """a --disable-usage-stats cluster; nobody moves dash_ReportHead away and binds
    an impostor claiming usage stats are on: the cluster is still not reported."""
    session_dir = make_session_dir(temp_root)
    answers = responses_with()
    answers["dash_ReportHead"]["/api/v0/cluster_metadata"] = DISABLED_METADATA
    cluster = DemoCluster(session_dir, answers)
    await cluster.start()
    open_like_ray(temp_root, session_dir)
    path = session_dir / "sockets" / "dash_ReportHead"
    impostor = fake_dashboard(path, ENABLED_METADATA, move_away=path.with_name("ray_report_old"))
    settings = make_settings({"RAY_USAGE_STATS_REPORT_URL": endpoint.url})
    try:
        with running_as(impostor):
            _, events = await run_cycles(settings)
    finally:
        await cluster.stop()
    assert endpoint.bodies() == []  # nothing about this cluster left the machine
    problems = problems_of(events, "dash_ReportHead")  # type: ignore[arg-type]
    assert problems and all(f"served by uid {NOBODY}" in p for p in problems)
    assert named(events, "session.not_reported")


@pytest.fixture
def root_only_socket() -> Iterator[tuple[Path, Callable[[], int]]]:
    """A root-served socket in a root-only (0700) directory; and how many reached it."""
    private = Path(open_dir())
    private.chmod(0o700)
    path = private / "private.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1024)
    server.setblocking(False)

    def reached() -> int:
        count = 0
        while True:
            try:
                server.accept()[0].close()
            except BlockingIOError:
                return count
            count += 1

    yield path, reached
    server.close()
    shutil.rmtree(private, ignore_errors=True)


def swapper(path: Path, target: Path, most_s: float = 0.002) -> Serve:
    """The attacker's body (as nobody): flip `path` between its own socket and a symlink to
    `target`, each held for a random time up to `most_s`, so a check and a connect shortly
    after it often see different things (random, so no fixed gap between them escapes)."""

    def serve(ready: Callable[[str], None]) -> None:
        decoy = path.with_name(".decoy.sock")
        hard, link = path.with_name(".decoy.hard"), path.with_name(".decoy.link")
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(decoy))
        server.listen(1024)
        ready("swapping")
        while True:
            os.link(decoy, hard)
            os.rename(hard, path)  # a socket file: passes an lstat check
            until = time.monotonic() + random.uniform(0, most_s)
            os.symlink(target, link)
            while time.monotonic() < until:
                pass
            os.rename(link, path)  # then a symlink into root's private directory
            until = time.monotonic() + random.uniform(0, most_s)
            while time.monotonic() < until:
                pass

    return serve


async def test_row12_symlink_swapped_before_the_connect_is_not_followed(
    make_settings: Callable[..., Settings],
    endpoint: ScriptedEndpoint,
    ray_session: DemoCluster,
    root_only_socket: tuple[Path, Callable[[], int]],
) -> None:
    """nobody flips dash_JobHead between a socket and a symlink to a root-only
    socket: the daemon never connects to the root-only socket, and refuses the decoy."""
    private, reached = root_only_socket
    path = ray_session.session_dir / "sockets" / "dash_JobHead"
    path.unlink()  # Ray's JobHead is gone: its name is the attacker's to play with
    # A generous socket timeout: the race is won or lost at the connect, and a loaded
    # machine must not lose a cycle's dashboard answer (149 of 150 were seen at 0.3 s).
    settings = make_settings(
        {"RAY_USAGE_STATS_REPORT_URL": endpoint.url, "USAGESTATSD_SOCKET_TIMEOUT_S": "2"}
    )
    # Each cycle is one try at the race; before the fix about 1 in 13 tries won it.
    with running_as(swapper(path, private)):
        _, events = await run_cycles(settings, cycles=150)
    assert reached() == 0  # not one connection reached root's private socket
    assert len(endpoint.bodies()) == 150
    assert all(body["total_num_running_jobs"] is None for body in endpoint.bodies())
    assert problems_of(events, "dash_JobHead")  # type: ignore[arg-type]


def open_directory(path: Path) -> str:
    """As nobody: a 0777 directory, as Ray would make it."""
    os.mkdir(path)
    os.chmod(path, 0o777)
    return "made"


def attacker_session(root: Path, name: str) -> str:
    """As nobody: a session directory of its own with a sockets/ dir, the newest by name."""
    session = root / name
    os.mkdir(session, 0o777)
    os.mkdir(session / "sockets", 0o777)
    os.chmod(session, 0o777)
    os.chmod(session / "sockets", 0o777)
    return "made"


def repoint_latest(root: Path, target: Path) -> str:
    """As nobody: replace session_latest with a link to `target` (a 0777 root: allowed)."""
    tmp = root / ".latest.tmp"
    os.symlink(target, tmp)
    os.rename(tmp, root / "session_latest")
    return "repointed"


@pytest.mark.slow
async def test_row9_temp_root_made_by_another_user_is_not_trusted(
    endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """nobody makes the temp root before Ray does and plants a session serving a
    forged 'usage stats on'; Ray's session lands in it too: none of it is reported."""
    temp_root.parent.chmod(0o1777)  # like /tmp
    root = temp_root.parent / "ray-early"
    assert as_user(lambda: open_directory(root)) == "made"
    ray_session = make_session_dir(root)  # Ray (root) starts in the attacker's directory
    cluster = DemoCluster(ray_session, responses_with())
    await cluster.start()
    planted = root / "session_2099-01-01_00-00-00_000000_1"
    assert as_user(lambda: attacker_session(root, planted.name)) == "made"
    assert as_user(lambda: repoint_latest(root, planted)) == "repointed"
    env = daemon_env(root, state_dir, endpoint.url, USAGESTATSD_LOG_LEVEL="debug")
    try:
        impostor = fake_dashboard(planted / "sockets" / "dash_ReportHead", ENABLED_METADATA)
        with running_as(impostor), running_daemon(env) as daemon:
            line = await await_line(daemon, "session.missing")
            await await_looks(daemon, 4)  # four more looks, none of them reporting
            assert daemon.proc.poll() is None
    finally:
        await cluster.stop()
    assert f"owned by nobody (uid {NOBODY})" in line
    assert endpoint.received == []


@pytest.mark.slow
async def test_row10_session_latest_repointed_at_a_dead_session_follows_the_live_one(
    endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """nobody re-points session_latest at an old root-owned session (and runs a
    process claiming it); the daemon keeps reporting the live one, which Ray's processes
    run for."""
    old = make_session_dir(temp_root, time.time() - 86400)  # yesterday's, Ray stopped
    live = make_session_dir(temp_root)
    cluster = DemoCluster(live, responses_with())
    await cluster.start()
    open_like_ray(temp_root, live)
    # What Ray leaves for a live session: its gcs_server and raylet, as Ray's user, run
    # with --session-name=<name> (here a stand-in process with that argument, as root).
    ray = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", f"--session-name={live.name}"]
    )

    def claim_old(ready: Callable[[str], None]) -> None:
        repoint_latest(temp_root, old)
        ready("claimed")
        os.execv("/bin/sleep", ["sleep", "120", f"--session-name={old.name}"])

    env = daemon_env(temp_root, state_dir, endpoint.url)
    try:
        with running_as(claim_old), running_daemon(env) as daemon:
            await until(lambda: len(endpoint.received) >= 3)
            found = daemon.wait_for("session.found")
    finally:
        ray.kill()
        ray.wait()
        await cluster.stop()
    assert live.name in found and old.name not in found.split("refused")[0]
    assert all(b["total_num_nodes"] == 1 for b in endpoint.bodies())


def reports_after(endpoint: ScriptedEndpoint, more: int) -> Callable[[], bool]:
    """True once `more` reports beyond those received so far have arrived."""
    target = len(endpoint.received) + more
    return lambda: len(endpoint.received) >= target


def vm_kib(pid: int, field: str) -> int:
    """A memory figure of a process from /proc (VmRSS, VmHWM), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


# A hostile job list, and the costliest bodies still within the job list's caps (docs/security.md).
EMPTY_OBJECTS = b"[" + b",".join([b"{}"] * ((32 << 20) // 3 - 1)) + b"]"  # 32 MiB of [{},{},...]
ONE_KEY_OBJECTS = b"[" + b",".join([b'{"a":1}'] * 85_000) + b"]"  # decode cost just under 40 MiB
LONG_STRING = b'["' + b"x" * ((8 << 20) - 8) + b'"]'  # just under 8 MiB


@pytest.mark.slow
async def test_row3_huge_answers_cost_little_memory_and_time(
    endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """dash_JobHead answers 32 MiB of [{},{},...] (as nobody, then as root), then
    the costliest bodies within its caps: the daemon's peak RSS grows by < 100 MB, and it
    keeps reporting on schedule."""
    session_dir = make_session_dir(temp_root)
    cluster = DemoCluster(session_dir, responses_with(drop=["dash_JobHead"]))
    await cluster.start()
    open_like_ray(temp_root, session_dir)
    jobs = session_dir / "sockets" / "dash_JobHead"
    env = daemon_env(temp_root, state_dir, endpoint.url)
    attacks = [(NOBODY, EMPTY_OBJECTS), (0, EMPTY_OBJECTS), (0, ONE_KEY_OBJECTS), (0, LONG_STRING)]
    try:
        with running_daemon(env) as daemon:
            with running_as(fake_dashboard(jobs, recorded("dash_job_list.json")), uid=0):
                await until(lambda: len(endpoint.received) >= 2)
            baseline = vm_kib(daemon.proc.pid, "VmHWM")
            for uid, body in attacks:
                jobs.unlink()
                with running_as(fake_dashboard(jobs, body), uid=uid):
                    await until(reports_after(endpoint, 2), timeout=60)
            peak = vm_kib(daemon.proc.pid, "VmHWM")
            assert daemon.proc.poll() is None
    finally:
        await cluster.stop()
    assert (peak - baseline) < 100 * 1024, f"peak RSS grew by {(peak - baseline) // 1024} MB"
    assert daemon.count("cycle.crashed") == 0
    assert all(b["total_num_running_jobs"] is None for b in endpoint.bodies()[2:])


def cpu_seconds(pid: int) -> float:
    """The process's own user+system CPU time (children excluded), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


COSTLY_LINE = b"- {a: 1, b: [x, y]}\n"  # ~6 s of CPU per MiB in yaml.safe_load (measured)


def write_yaml(path: Path, size: int) -> str:
    """As nobody: `size` bytes of valid, costly YAML at `path`."""
    with open(path, "wb") as f:
        f.write(COSTLY_LINE * (size // len(COSTLY_LINE)))
    return "written"


@pytest.mark.slow
@pytest.mark.parametrize("size", [1 << 20, 250 << 10], ids=["1MiB", "250KiB"])
async def test_row8_costly_cluster_config_never_stalls_the_loop(
    endpoint: ScriptedEndpoint, ray_session: DemoCluster, state_dir: Path, size: int
) -> None:
    """nobody fills the cluster config with costly YAML; reports keep coming, and the
    daemon's own CPU stays low (parsed in a child, once, within a cap and a deadline)."""
    config = open_dir() / "ray_bootstrap_config.yaml"
    assert as_user(lambda: write_yaml(config, size)) == "written"
    temp_root = ray_session.session_dir.parent
    env = daemon_env(temp_root, state_dir, endpoint.url, USAGESTATSD_CLUSTER_CONFIG=str(config))
    try:
        with running_daemon(env) as daemon:
            await until(lambda: len(endpoint.received) >= 4, timeout=120)
            cpu = cpu_seconds(daemon.proc.pid)
            assert daemon.stop() == 0
    finally:
        shutil.rmtree(config.parent, ignore_errors=True)
    assert cpu < 3.0, f"the daemon itself used {cpu:.1f} s of CPU"
    assert all(b["cloud_provider"] == "unknown" for b in endpoint.bodies())
    assert f"cluster config file {config}" in daemon.wait_for("cluster.source_failed")
