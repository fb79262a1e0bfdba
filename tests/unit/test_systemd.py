"""sd_notify: messages reach the socket; a reader that never reads cannot stall us."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from usagestatsd.base.sdnotify import Notifier, watchdog_interval


def test_messages_and_abstract_address(tmp_path: Path) -> None:
    """READY, STATUS, WATCHDOG and STOPPING arrive as datagrams."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    notifier = Notifier(str(path))
    notifier.ready("Waiting")
    notifier.status("Last report 14:00:03 ok (seq 5)\nnext")
    notifier.watchdog()
    notifier.stopping()
    got = [sock.recv(1024).decode() for _ in range(4)]
    sock.close()
    assert got[0].startswith("READY=1\nSTATUS=Waiting")
    assert got[1] == "STATUS=Last report 14:00:03 ok (seq 5) next"
    assert got[2] == "WATCHDOG=1"
    assert got[3].startswith("STOPPING=1")


def test_full_queue_never_blocks(tmp_path: Path) -> None:
    """Thousands of pings to a socket nobody reads return at once (dropped, not blocked)."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    notifier = Notifier(str(path))
    started = time.monotonic()
    for _ in range(5000):
        notifier.watchdog()
    elapsed = time.monotonic() - started
    sock.close()
    assert elapsed < 5  # blocking would hang forever at the ~10th datagram


def test_outside_systemd_is_a_no_op() -> None:
    """Without NOTIFY_SOCKET nothing is sent and nothing fails."""
    notifier = Notifier(None)
    notifier.ready("x")
    assert not notifier.active


def test_watchdog_interval() -> None:
    """Ping at half of WatchdogSec; not for another process's watchdog."""
    assert watchdog_interval(120_000_000, None) == 60.0
    assert watchdog_interval(None, None) is None
    assert watchdog_interval(1_000_000, 1) is None
