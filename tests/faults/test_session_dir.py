"""The session directory misbehaving: bad links, replaced mid-cycle, read-only, disk full."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.faults.helpers import fill, named, report_cycle, responses_with, the_session, tmpfs
from tests.support.poll import until
from tests.support.processes import await_line, intake_env, running_daemon
from tests.support.servers import RawUnixServer, ScriptedEndpoint, http_reply, read_request
from usagestatsd.config.settings import Settings
from usagestatsd.cycle.run import ReportCycle, Result
from usagestatsd.demo import DemoCluster, make_session_dir, recorded
from usagestatsd.facts.session import Session
from usagestatsd.store.state import StateStore


def tmp_files(directory: Path) -> list[str]:
    """Temporary files left behind by an interrupted write."""
    return [name for name in os.listdir(directory) if name.endswith(".tmp")]


@pytest.mark.slow
async def test_bad_session_latest_links_then_a_real_session(
    endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """A looping, dangling or /etc session_latest is refused and logged; a real one is used."""
    link = temp_root / "session_latest"
    link.symlink_to("session_latest")  # a loop
    env = intake_env(temp_root, state_dir, endpoint.url)
    with running_daemon(env) as daemon:
        line = await await_line(daemon, "session.missing")
        assert "does not point to a session directory" in line
        for target in ("session_gone", "/etc"):
            link.unlink()
            link.symlink_to(target)
            await asyncio.sleep(1.0)
        assert daemon.proc.poll() is None and endpoint.received == []
        cluster = DemoCluster(make_session_dir(temp_root), responses_with())
        await cluster.start()
        try:
            await until(lambda: len(endpoint.received) >= 1)
        finally:
            await cluster.stop()
    assert not (Path("/etc") / "usage_stats.json").exists()
    assert daemon.count("session.missing") == 1  # said once, not every poll


def slow_jobs(delay: float) -> Callable[[socket.socket], None]:
    """dash_JobHead answering after `delay` seconds."""

    def answer(conn: socket.socket) -> None:
        read_request(conn)
        time.sleep(delay)
        conn.sendall(http_reply(recorded("dash_job_list.json")))

    return answer


@pytest.mark.parametrize("replacement", ["file", "symlink"])
async def test_session_dir_replaced_mid_cycle(
    make_settings: Callable[..., Settings],
    endpoint: ScriptedEndpoint,
    temp_root: Path,
    tmp_path: Path,
    replacement: str,
) -> None:
    """The session dir swapped for a file or a symlink while gathering: nothing written there."""
    session_dir = make_session_dir(temp_root)
    cluster = DemoCluster(session_dir, responses_with(drop=["dash_JobHead"]))
    await cluster.start()
    slow = RawUnixServer(session_dir / "sockets" / "dash_JobHead", slow_jobs(0.5))
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    settings = make_settings({"RAY_USAGE_STATS_REPORT_URL": endpoint.url})
    cycle = report_cycle(settings)
    moved = temp_root / "moved-away"
    try:
        with capture_logs() as events:
            session = the_session(temp_root)
            running = asyncio.create_task(cycle.run(session))
            await until(lambda: slow.connections > 0, 5)
            session_dir.rename(moved)
            if replacement == "file":
                session_dir.write_text("not a directory")
            else:
                session_dir.symlink_to(victim_dir)
            first = await running  # a crash would raise here
            second = await cycle.run(session)  # the next cycle notices
    finally:
        slow.path = moved / "sockets" / "dash_JobHead"
        slow.close()
        await cluster.stop()
    [failed] = named(events, "usage_stats.write_failed")
    assert failed["path"] == str(session_dir / "usage_stats.json") and failed["problem"]
    assert named(events, "session.vanished")
    assert (first.result, second.result) == (Result.SENT, Result.VANISHED)
    assert list(victim_dir.iterdir()) == []
    assert not (moved / "usage_stats.json").exists()
    if replacement == "file":
        assert session_dir.read_text() == "not a directory"


@pytest.fixture
def session_on_tmpfs(temp_root: Path) -> Iterator[Path]:
    """A session directory that is its own small tmpfs (64 KiB), so it can fill or go read-only."""
    session_dir = make_session_dir(temp_root)
    shutil.rmtree(session_dir / "sockets")
    with tmpfs(session_dir, "64k"):
        (session_dir / "sockets").mkdir()
        yield session_dir
        subprocess.run(["mount", "-o", "remount,rw", str(session_dir)], check=False)


@pytest.fixture
async def tmpfs_daemon(
    make_settings: Callable[..., Settings],
    endpoint: ScriptedEndpoint,
    temp_root: Path,
    session_on_tmpfs: Path,
) -> AsyncIterator[tuple[ReportCycle, Session]]:
    """A daemon (driven cycle by cycle) and the served session on the small tmpfs."""
    cluster = DemoCluster(session_on_tmpfs, responses_with())
    await cluster.start()
    settings = make_settings({"RAY_USAGE_STATS_REPORT_URL": endpoint.url})
    yield report_cycle(settings), the_session(temp_root)
    await cluster.stop()


async def test_session_dir_not_writable(
    endpoint: ScriptedEndpoint,
    session_on_tmpfs: Path,
    tmpfs_daemon: tuple[ReportCycle, Session],
) -> None:
    """A read-only session dir: the report is still sent, one warning, the next cycle writes."""
    cycle, session = tmpfs_daemon
    subprocess.run(["mount", "-o", "remount,ro", str(session_on_tmpfs)], check=True)
    with capture_logs() as first:
        await cycle.run(session)
    subprocess.run(["mount", "-o", "remount,rw", str(session_on_tmpfs)], check=True)
    with capture_logs() as second:
        await cycle.run(session)
    [failed] = named(first, "usage_stats.write_failed")
    assert failed["problem"] == "Read-only file system"
    assert len(endpoint.received) == 2 and named(second, "usage_stats.write_failed") == []
    local = json.loads((session_on_tmpfs / "usage_stats.json").read_bytes())
    assert local["usage_stats"]["seq_number"] == 1


async def test_disk_full_keeps_the_old_usage_stats(
    endpoint: ScriptedEndpoint,
    session_on_tmpfs: Path,
    tmpfs_daemon: tuple[ReportCycle, Session],
) -> None:
    """Disk full: usage_stats.json stays the old complete file, no temp file left; then heals."""
    cycle, session = tmpfs_daemon
    path = session_on_tmpfs / "usage_stats.json"
    with capture_logs() as events:
        await cycle.run(session)
        old = path.read_bytes()
        fill(session_on_tmpfs)
        await cycle.run(session)
        during = path.read_bytes()
        leftovers = tmp_files(session_on_tmpfs)
        (session_on_tmpfs / "filler").unlink()
        await cycle.run(session)
    [failed] = named(events, "usage_stats.write_failed")
    assert failed["problem"] == "No space left on device"
    assert during == old and json.loads(old)["usage_stats"]["seq_number"] == 0
    assert leftovers == []
    assert json.loads(path.read_bytes())["usage_stats"]["seq_number"] == 2
    assert [b["seq_number"] for b in endpoint.bodies()] == [0, 1, 2]


async def test_state_dir_full_keeps_counters(
    make_settings: Callable[..., Settings],
    endpoint: ScriptedEndpoint,
    demo_session: DemoCluster,
    temp_root: Path,
    tmp_path: Path,
) -> None:
    """State dir full: state.json stays the old version and no seq number is sent unsaved.

    The report whose seq number cannot be saved first waits (report.not_sent) and goes out,
    with that number, once space returns (a restart never reuses one).
    """
    state_dir = tmp_path / "full-state"
    with tmpfs(state_dir, "64k"):
        settings = make_settings(
            {"RAY_USAGE_STATS_REPORT_URL": endpoint.url, "USAGESTATSD_STATE_DIR": str(state_dir)}
        )
        cycle = report_cycle(settings)
        session = the_session(temp_root)
        with capture_logs() as events:
            await cycle.run(session)
            old = (state_dir / "state.json").read_bytes()
            fill(state_dir)
            await cycle.run(session)
            during = (state_dir / "state.json").read_bytes()
            leftovers = tmp_files(state_dir)
            for name in ("filler", "filler2"):
                (state_dir / name).unlink(missing_ok=True)
            await cycle.run(session)
        saved = StateStore(state_dir).load()
    assert named(events, "state.write_failed") and len(named(events, "report.not_sent")) == 1
    assert during == old and leftovers == []
    assert [b["seq_number"] for b in endpoint.bodies()] == [0, 1]
    assert saved.session is not None and saved.session.counters.seq_number == 2
