"""`usagestatsd setup`, run by root, meets a Ray head forged by another local user.

The attacker is the real uid `nobody` (tests/support/hostile.py): it runs processes whose
command lines look like Ray's dashboard and gcs_server, with a temp root and session of
its own, or plants a FIFO in a real (root's) session directory. Setup runs as the
installed command, as root types it, with a deadline so a hang shows as a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from tests.support.hostile import NOBODY, as_user, needs_root, open_dir, running_as
from tests.support.poll import wait_until

pytestmark = needs_root

SETUP_DEADLINE_S = 60


def looks_like(argv: list[str], make: Callable[[], None] = lambda: None) -> Callable[..., None]:
    """A process whose /proc/<pid>/cmdline is `argv` (a shell loop behind it)."""

    def serve(ready: Callable[[str], None]) -> None:
        make()
        ready("made")
        os.execv("/bin/sh", [argv[0], "-c", "while :; do sleep 1; done", *argv[1:]])

    return serve


@contextmanager
def forged_processes(*argvs: list[str], uid: int, make: Callable[[], None]) -> Iterator[list[int]]:
    """Run each argv as `uid` (the first also runs `make`) until the block ends."""
    with ExitStack() as stack:
        pids = []
        for i, argv in enumerate(argvs):
            pid, _ = stack.enter_context(
                running_as(looks_like(argv, make if i == 0 else lambda: None), uid)
            )
            wait_until(_runs_as(pid, argv[0]), what=f"pid {pid} to run as {argv[0]}")
            pids.append(pid)
        yield pids


def _runs_as(pid: int, program: str) -> Callable[[], bool]:
    """Has `pid` exec'd into `program` yet (its command line starts with it)?"""
    return lambda: Path(f"/proc/{pid}/cmdline").read_bytes().startswith(program.encode())


def dashboard_argv(where: Path, root: Path, session: Path) -> list[str]:
    """Ray 2.60's dashboard command line, with a Python and a site-packages under `where`."""
    return [
        str(where / "venv" / "bin" / "python"),
        str(where / "site" / "ray" / "dashboard" / "dashboard.py"),
        "--host=127.0.0.1",
        f"--temp-dir={root}",
        f"--session-dir={session}",
    ]


def _mkfifo(path: Path) -> str:
    os.mkfifo(path)
    return "planted"


def run_setup(tmp_path: Path, *args: str) -> tuple[int, str]:
    """`usagestatsd setup` as root runs it (the installed command), under a deadline."""
    settings = tmp_path / "usagestatsd.toml"
    settings.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "USAGESTATSD_"))}
    command = str(Path(sys.executable).parent / "usagestatsd")
    try:
        done = subprocess.run(
            [command, "setup", "--config", str(settings), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=SETUP_DEADLINE_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`usagestatsd setup` hung (no answer in {SETUP_DEADLINE_S} s)")
    return done.returncode, done.stdout + done.stderr


def test_a_dashboard_run_by_nobody_never_becomes_rays_user(tmp_path: Path) -> None:
    where = open_dir()
    root, session = where / "ray", where / "ray" / "session_2026-12-03_10-00-00_000000_1"

    def make() -> None:  # as nobody: a temp root and a session of its own, as Ray makes them
        session.mkdir(parents=True)
        root.chmod(0o777)
        session.chmod(0o777)

    gcs = [str(where / "site" / "ray" / "core" / "src" / "ray" / "gcs" / "gcs_server")]
    gcs += [f"--session-name={session.name}", "--gcs_server_port=6379"]
    try:
        with forged_processes(dashboard_argv(where, root, session), gcs, uid=NOBODY, make=make) as (
            dashboard,
            _,
        ):
            status, out = run_setup(tmp_path)
        print(f"\nsetup (exit {status}):\n{out}")
        assert "User=nobody" not in out and "USAGESTATSD_RAY_USER=nobody" not in out
        assert str(where / "venv") not in out  # the attacker's Python is never planned
        assert f"Ignored: pid {dashboard} (uid 65534) looks like a Ray dashboard" in out
        assert "uid 65534 (nobody) is never Ray's user" in out
    finally:
        shutil.rmtree(where, ignore_errors=True)


def test_a_fifo_planted_as_rays_usage_stats_json_does_not_hang_setup(tmp_path: Path) -> None:
    where = Path(open_dir())
    root, session = where / "ray", where / "ray" / "session_2026-12-03_10-00-00_000000_2"
    session.mkdir(parents=True)
    root.chmod(0o777)  # as Ray makes them: any local user can add entries
    session.chmod(0o777)
    fifo = session / "usage_stats.json"
    assert as_user(lambda: _mkfifo(fifo)) == "planted"
    # Root's dashboard names a site-packages without Ray's dist-info: setup then reads the
    # version from the session's usage_stats.json, the attacker's FIFO.
    argv = dashboard_argv(where, root, session)
    argv[0] = "/usr/bin/python3"
    try:
        with forged_processes(argv, uid=0, make=lambda: None) as (dashboard,):
            status, out = run_setup(tmp_path, "--temp-root", str(root))
        print(f"\nsetup (exit {status}):\n{out}")
        assert f"Ray on this machine (dashboard pid {dashboard}):" in out
        assert "Ray version:   unknown" in out
    finally:
        shutil.rmtree(where, ignore_errors=True)
