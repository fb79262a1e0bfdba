"""`make run` (`usagestatsd demo`) in a terminal: closing the window cleans up like Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.support.poll import wait_until


def _read_until(fd: int, pattern: str, seen: list[str], timeout: float = 60.0) -> re.Match[str]:
    """Read the terminal until `pattern` shows in what was printed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, "".join(seen))
        if found:
            return found
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                seen.append(os.read(fd, 65536).decode(errors="replace"))
            except OSError:
                break
    raise AssertionError(f"no {pattern!r} in:\n{''.join(seen)}")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("how", ["close the terminal", "Ctrl-C"])
def test_demo_in_a_terminal_stops_and_cleans_up(how: str) -> None:
    """The daemon child stops and the demo's temp directory goes, for SIGHUP as for SIGINT."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "USAGESTATSD_"))}
    env.pop("NOTIFY_SOCKET", None)
    # A real pseudo-terminal: the demo is its session leader, as a shell's job would be.
    pid, master = os.forkpty()
    if pid == 0:  # the child: becomes the demo at once
        os.execve(
            sys.executable, [sys.executable, "-m", "usagestatsd", "demo", "--interval", "0.5"], env
        )
    seen: list[str] = []
    try:
        tmp = Path(_read_until(master, r"under (\S+)/ray\r?\n", seen).group(1))
        daemon = int(_read_until(master, r"daemon pid (\d+)", seen).group(1))
        _read_until(master, r"receiver: got a report", seen)
        assert tmp.is_dir()
        if how == "Ctrl-C":
            os.write(master, b"\x03")
            _read_until(master, r"demo: stopped", seen)
        else:
            os.close(master)  # the window closes: the kernel hangs up the terminal (SIGHUP)
            master = -1
        _, status = os.waitpid(pid, 0)
        pid = 0
        assert os.waitstatus_to_exitcode(status) == 0, "".join(seen)
        wait_until(lambda: _gone(daemon), 10, "the daemon child to end with the demo")
        assert not tmp.exists(), "the demo's temp directory stayed"
    finally:
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        if master >= 0:
            os.close(master)
