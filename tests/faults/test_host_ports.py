"""The tests of a stopped head do not depend on the host's ports.

A stopped head has no dash_* sockets and no dashboard process, so the daemon tries Ray's
default 127.0.0.1:8265. On a developer's machine a real Ray dashboard may listen there, run
by a process the tests cannot see (they run in a container, in a PID namespace of their
own). Here that shape is made for real: a network namespace of this test's own, a listener
on 8265 in it held by a process outside the PID namespace pytest then runs in.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STOPPED_HEAD_TESTS = [
    "tests/faults/test_cycle.py::test_a_stopped_head_is_refused_once_at_info",
    "tests/process/test_daemon.py::test_stopped_cluster_is_one_info_line",
]
HOLD_8265 = """
import socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8265))
s.listen(16)
time.sleep(300)  # killed by the script's trap long before
"""
# Inside the new network namespace: bring up loopback, hold 8265 in this PID namespace,
# run the tests in a child PID namespace (bash as its pid 1, so pytest is not pid 1).
SCRIPT = """
set -e
ip link set lo up
"$PY" -c "$HOLD" &
holder=$!
trap 'kill $holder' EXIT
for _ in $(seq 50); do "$PY" -c 'import socket; socket.create_connection(("127.0.0.1", 8265))' \
    2>/dev/null && break; sleep 0.1; done
unshare --pid --fork --mount-proc \
    bash -c 'cd "$ROOT" && "$PY" -m pytest -q -p no:cacheprovider "$@"; exit $?' -- "$@"
"""


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="network and PID namespaces need root")
@pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("ip") is None,
                    reason="unshare (util-linux) and ip (iproute2) are needed")  # fmt: skip
def test_stopped_head_tests_pass_beside_a_hidden_dashboard_on_8265() -> None:
    env = {**os.environ, "PY": sys.executable, "HOLD": HOLD_8265, "ROOT": str(ROOT)}
    env.pop("PYTEST_ADDOPTS", None)
    run = subprocess.run(
        ["unshare", "--net", "bash", "-c", SCRIPT, "--", *STOPPED_HEAD_TESTS],
        capture_output=True, text=True, env=env, timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "2 passed" in run.stdout
