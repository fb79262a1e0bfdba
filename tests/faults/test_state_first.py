"""A full state file system; state first, the history gives way.

Before the fix the history filled the disk, `state.json` could no longer be saved, and after
a restart the seq number went back (384 to 51 in the review). Now every seq number is saved
before it is sent, the history keeps a free-space reserve and is the one that shrinks.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.faults.helpers import tmpfs
from tests.support.poll import until
from tests.support.processes import daemon_env, start_daemon
from tests.support.servers import RawTcpServer, ScriptedEndpoint, http_reply, read_whole_request
from usagestatsd.demo import DemoCluster

FS_BYTES = 192 << 10


NOBODY = 65534
FILL = """
import os, sys
fd = int(sys.argv[1])
for name, size in (("filler", 4096), ("filler2", 1)):
    out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600, dir_fd=fd)
    try:
        while True:
            os.write(out, b"\\0" * size)
    except OSError:
        pass
"""


def fill_as_nobody(directory: Path) -> None:
    """A local user (uid nobody) fills the file system through a world-writable directory
    on it (as /var/tmp shares /var with /var/lib/usagestatsd on many hosts)."""
    shared = directory / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    fd = os.open(shared, os.O_RDONLY | os.O_DIRECTORY)
    try:
        subprocess.run(
            ["/usr/bin/python3", "-c", FILL, str(fd)],
            pass_fds=(fd,),
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
            cwd="/",
            check=True,
            timeout=60,
        )
    finally:
        os.close(fd)
    assert (shared / "filler").stat().st_uid == NOBODY


def sent_bytes(endpoint: ScriptedEndpoint) -> int:
    """Roughly what the history has been asked to hold so far (each body plus its record)."""
    return sum(len(body) + 300 for _, body, _ in endpoint.received)


def seqs(endpoint: ScriptedEndpoint) -> list[int]:
    """The seq numbers the endpoint received, in order."""
    return [int(body["seq_number"]) for body in endpoint.bodies()]


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
async def test_full_state_file_system_never_sends_a_seq_number_twice(
    demo_session: DemoCluster, endpoint: ScriptedEndpoint, temp_root: Path, tmp_path: Path
) -> None:
    """History fills a small state fs, then uid nobody fills the rest; SIGKILL, restart."""
    state_dir = tmp_path / "state"
    with tmpfs(state_dir, f"{FS_BYTES // 1024}k"):
        env = daemon_env(
            temp_root, state_dir, endpoint.url, RAY_USAGE_STATS_REPORT_INTERVAL_S="0.05"
        )
        first = start_daemon(env)
        try:
            # Enough reports that an unbounded history would have filled the file system...
            await until(lambda: sent_bytes(endpoint) > 1.5 * FS_BYTES, 60)
            fill_as_nobody(state_dir)  # ...and then a local user takes the rest.
            before_fill = len(endpoint.received)
            await until(lambda: len(endpoint.received) >= before_fill + 5, 20)
        finally:
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait()
        killed_at = seqs(endpoint)[-1]
        second = start_daemon(env)
        try:
            count = len(endpoint.received)
            await until(lambda: len(endpoint.received) >= count + 3, 20)
        finally:
            second.proc.terminate()
            second.proc.wait(10)
        state = json.loads((state_dir / "state.json").read_bytes())
        history = (state_dir / "history.jsonl").read_bytes()
        usage = os.statvfs(state_dir)
    received = seqs(endpoint)
    after = received[received.index(killed_at) + 1 :]
    assert after and after[0] > killed_at, (killed_at, after)  # never back after a restart
    assert received == sorted(set(received)), received  # and never the same number twice
    assert state["session"]["counters"]["seq_number"] > received[-1]
    assert all(json.loads(line) for line in history.splitlines())  # every record whole
    assert first.count("state.write_failed") == 0 and second.count("state.write_failed") == 0
    assert first.count("history.gave_way") >= 1
    print(
        f"state fs {FS_BYTES >> 10} KiB: {len(received)} reports, killed at seq {killed_at}, "
        f"first after restart {after[0]}; history {len(history)} bytes, "
        f"{usage.f_bavail * usage.f_frsize} bytes free at the end"
    )


async def test_seq_number_is_saved_before_it_is_sent(
    demo_session: DemoCluster, temp_root: Path, state_dir: Path
) -> None:
    """While the endpoint holds a report, state.json already counts its seq number as used."""
    seen: list[tuple[int, int]] = []

    def look_then_answer(conn: socket.socket) -> None:
        request = read_whole_request(conn)
        sent = json.loads(request.partition(b"\r\n\r\n")[2])["seq_number"]
        state = json.loads((state_dir / "state.json").read_bytes())
        seen.append((sent, state["session"]["counters"]["seq_number"]))
        conn.sendall(http_reply(b"{}"))

    server = RawTcpServer([look_then_answer])
    daemon = start_daemon(daemon_env(temp_root, state_dir, server.url()))
    try:
        await until(lambda: len(seen) >= 3, 20)
    finally:
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait()
        server.close()
    assert all(saved == sent + 1 for sent, saved in seen), seen
