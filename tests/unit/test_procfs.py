"""One reading of other processes' command lines: the daemon and `setup` agree on them."""

from __future__ import annotations

import os
from pathlib import Path

from usagestatsd.facts.dashboard import as_dashboard_of
from usagestatsd.facts.procfs import cmdline, option, pids
from usagestatsd.facts.ray_head import parse_dashboard
from usagestatsd.facts.session import Session

SCRIPT = "/venv/lib/python3.11/site-packages/ray/dashboard/dashboard.py"


def fake_process(proc: Path, pid: int, argv: list[str]) -> None:
    """A /proc/<pid> (owned by this user) with this command line."""
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))


def test_a_repeated_option_is_read_as_argparse_reads_it_the_last_wins() -> None:
    assert option(["--port=8265", "--port=9999"], "--port") == "9999"
    assert option(["--port", "9999", "--port=8265"], "--port") == "8265"
    assert option(["--port-retries=0"], "--port") is None
    assert option(["--port"], "--port") is None  # no value follows


def test_the_daemon_and_setup_read_the_same_dashboard_command_line_alike(tmp_path: Path) -> None:
    """`--port=8265 --port=9999`: the dashboard listens on 9999; both readers say so."""
    first, last = tmp_path / "session_a", tmp_path / "session_b"
    last.mkdir()
    argv = ["/venv/bin/python", SCRIPT, "--host=127.0.0.1", "--port=8265", "--port=9999"]
    argv += [f"--session-dir={first}", f"--session-dir={last}", f"--temp-dir={tmp_path}"]
    proc = tmp_path / "proc"
    fake_process(proc, 4242, argv)
    st = last.stat()
    session = Session(last, last.name, st.st_dev, st.st_ino, os.geteuid())

    found = as_dashboard_of(4242, session, proc)  # the daemon's reading
    assert found is not None and (found.host, found.port) == ("127.0.0.1", 9999)
    args = parse_dashboard(cmdline(4242, proc), None)  # setup's reading
    assert args is not None and args.session_dir == str(last)
    assert pids(proc) == [4242]
