"""SIGKILL at random moments while writing: files are always old-or-new, counters never drop.

The number of kills scales with FAULTS_KILLS (default 400 at the file level, a tenth of that
against the real daemon); docs/reliability.md quotes a run with more.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.poll import until
from tests.support.processes import DaemonProcess, daemon_env, start_daemon
from tests.support.servers import ScriptedEndpoint
from usagestatsd.base.files import atomic_write
from usagestatsd.demo import DemoCluster

KILLS = int(os.environ.get("FAULTS_KILLS", "400"))


def writer(directory: Path, progress: int) -> None:
    """The child: rewrite usage_stats.json forever with growing versions of varying size.

    After its first complete rewrite it writes one byte to `progress`, so the parent's kill
    always lands after some progress, however slow a loaded machine makes the child.
    """
    version = json.loads((directory / "usage_stats.json").read_bytes())["v"]
    rng = random.Random(os.getpid())
    while True:
        version += 1
        pad = "x" * rng.choice((10, 4_000, 200_000))
        atomic_write(directory, "usage_stats.json", json.dumps({"v": version, "pad": pad}).encode())
        if progress >= 0:
            os.write(progress, b".")
            os.close(progress)
            progress = -1


@pytest.mark.slow
def test_atomic_write_killed_at_random_moments(tmp_path: Path) -> None:
    """Hundreds of SIGKILLs mid-rewrite: the file is always a whole version, never older."""
    rng = random.Random(20261128)
    path = tmp_path / "usage_stats.json"
    atomic_write(tmp_path, "usage_stats.json", json.dumps({"v": 0, "pad": ""}).encode())
    last, torn = 0, 0
    for _ in range(KILLS):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(read_end)
                writer(tmp_path, write_end)
            finally:
                os._exit(0)
        os.close(write_end)
        os.read(read_end, 1)  # one whole rewrite done (or the child died: then b"")
        os.close(read_end)
        time.sleep(rng.uniform(0.0005, 0.02))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        version = json.loads(path.read_bytes())["v"]  # complete JSON, or this raises
        assert version >= last
        last = version
        leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        torn += len(leftovers)  # killed between creating the temporary file and the rename
        for leftover in leftovers:
            leftover.unlink()
    assert last >= KILLS  # every child completed at least one rewrite before its kill
    assert torn > KILLS // 10  # many kills really did land in the middle of a write
    print(f"atomic_write: {KILLS} kills, {torn} mid-write, final version {last}")


async def reporting(daemon: DaemonProcess) -> None:
    """Wait until the daemon has reported at least once (or died)."""
    try:
        await until(lambda: daemon.count("report.") > 0 or daemon.proc.poll() is not None, 20)
    except AssertionError:
        raise AssertionError("the daemon never reported:\n" + "\n".join(daemon.lines)) from None


def read_json(path: Path) -> Any:
    """A file's JSON (complete, or this raises), or None when it does not exist yet."""
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None


@pytest.mark.slow
async def test_daemon_killed_at_random_moments(
    demo_session: DemoCluster, endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """SIGKILL the real daemon at random moments (0.05 s interval): files whole, counters rise."""
    rng = random.Random(7)
    env = daemon_env(temp_root, state_dir, endpoint.url, RAY_USAGE_STATS_REPORT_INTERVAL_S="0.05")
    env["USAGESTATSD_RAY_INTAKE"] = "off"
    usage = demo_session.session_dir / "usage_stats.json"
    last_state = last_local = -1
    kills = max(10, KILLS // 10)
    for _ in range(kills):
        daemon = start_daemon(env)
        try:
            await reporting(daemon)
            await asyncio.sleep(rng.uniform(0.0, 0.6))
        finally:
            daemon.proc.send_signal(signal.SIGKILL)
            daemon.proc.wait()
        state = read_json(state_dir / "state.json")
        local = read_json(usage)
        history = state_dir / "history.jsonl"
        if history.exists():
            for line in history.read_bytes().splitlines():
                json.loads(line)  # every line whole
        if state is not None and state.get("session"):
            seq = state["session"]["counters"]["seq_number"]
            assert seq >= last_state
            last_state = seq
        if local is not None:
            seq = local["usage_stats"]["seq_number"]
            assert seq >= last_local
            last_local = seq
    seqs = [body["seq_number"] for body in endpoint.bodies()]
    # Each seq number is saved before it is sent: never repeated after a kill, never back.
    assert seqs == sorted(set(seqs))
    assert last_state > kills  # the counters kept rising across all the restarts
    leftovers = [p.name for p in demo_session.session_dir.iterdir() if p.name.endswith(".tmp")]
    print(
        f"daemon: {kills} kills, {len(seqs)} reports, final seq {last_state}, "
        f"{len(set(seqs))} distinct seq numbers, {len(leftovers)} temporary files left"
    )
