"""`make run-collector` (tools/run_collector.py): the whole loop, and a clean stop on SIGHUP."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "run_collector.py"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("usagestatsd.collector") is None,
    reason="SKIPPED LOUDLY: usagestatsd.collector is not in this tree (the collector branch)",
)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGINT])
def test_the_page_shows_the_session_and_a_signal_stops_everything(sig: signal.Signals) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--interval", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    seen: list[str] = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if " shows session " in line:
                break
        text = "".join(seen)
        shown = re.search(r"run-collector: (http://127\.0\.0\.1:\d+/) shows session (\w+)", text)
        assert shown, text
        assert f"the fleet page: {shown.group(1)}" in text
        root = re.search(r"demo Ray 2\.60 session \(recorded\) in (\S+)/ray/", text)
        assert root, text
        children = _children(proc.pid)
        assert len(children) == 2, text  # the collector and the daemon

        proc.send_signal(sig)
        rest = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, rest
    assert f"removed {root.group(1)}" in rest
    assert not Path(root.group(1)).exists()
    assert not [pid for pid in children if _alive(pid)]
