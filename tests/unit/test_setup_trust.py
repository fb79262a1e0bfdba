"""Whose Ray setup may act on (usagestatsd/setup/trust.py), with real files and directories.

The plausible-Ray-user rule is checked with uid 0 and an empty trusted set (the only
account with a home of its own every machine has); the /proc it reads is built here.
The attacks themselves, as the real uid `nobody`, are tests/faults/test_setup_trust.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.hostile import NOBODY, needs_root
from usagestatsd.facts.ray_head import RayHead, scan
from usagestatsd.setup.command import apply
from usagestatsd.setup.remedies import Plan
from usagestatsd.setup.trust import head_refusal, python_problem

SESSION = "session_2026-12-03_10-00-00_000000_1"


def proc_with(tmp: Path, uids: str, argv: list[str]) -> Path:
    """A /proc holding one process: its `Uid:` line and its command line."""
    proc = tmp / "proc"
    entry = proc / "300"
    entry.mkdir(parents=True)
    (entry / "status").write_text(f"Name:\tgcs_server\nUid:\t{uids}\n")
    (entry / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    return proc


def head_in(root: Path, uid: int = 0) -> RayHead:
    return RayHead(
        pid=200,
        uid=uid,
        user="root",
        python="/usr/bin/python3",
        temp_root=str(root),
        session_dir=str(root / SESSION),
        version=None,
        version_source=None,
        environ={},
        unit=None,
    )


@needs_root
def test_a_plausible_ray_user_owns_the_temp_root_the_session_and_a_process_running_it(
    tmp_path: Path,
) -> None:
    root = tmp_path / "ray"
    (root / SESSION).mkdir(parents=True)
    gcs = proc_with(tmp_path, "0\t0\t0\t0", ["gcs_server", f"--session-name={SESSION}"])
    assert head_refusal(head_in(root), frozenset(), gcs) is None
    assert head_refusal(head_in(root), frozenset({0}), tmp_path / "none") is None  # trusted
    # Once Ray's user is named (ray_user, the unit's User=), no other user is taken for it.
    named = head_refusal(head_in(root), frozenset({1000}), gcs, new_user_allowed=False)
    assert named == "it is not the Ray user already set (ray_user, or the daemon's User=)"

    empty = tmp_path / "empty-proc"
    empty.mkdir()
    assert "no process of root runs its session" in str(head_refusal(head_in(root), (), empty))
    setuid = proc_with(tmp_path / "s", "65534\t0\t0\t0", ["gcs", f"--session-name={SESSION}"])
    assert "no process of root" in str(head_refusal(head_in(root), (), setuid))
    os.chown(root / SESSION, NOBODY, NOBODY)
    assert "session directory" in str(head_refusal(head_in(root), (), gcs))
    os.chown(root, NOBODY, NOBODY)
    assert "temp root" in str(head_refusal(head_in(root), (), gcs))
    assert head_refusal(head_in(root, NOBODY), frozenset(), gcs) == (
        "uid 65534 (nobody) is never Ray's user"
    )


def test_a_set_uid_process_is_nobodys(tmp_path: Path) -> None:
    proc = proc_with(tmp_path, "65534\t0\t0\t0", ["/x/bin/python", "/x/ray/dashboard/dashboard.py"])
    assert scan(proc) == []  # real 65534, effective 0: not taken for root's


@needs_root
def test_rays_python_must_be_reachable_only_through_trusted_paths(tmp_path: Path) -> None:
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    tmp_path.chmod(0o755)
    python = venv / "python"
    python.symlink_to("/usr/bin/python3")
    assert python_problem(str(python), 1000) is None
    os.chown(venv, NOBODY, NOBODY)
    assert f"{venv} is owned by uid 65534" in str(python_problem(str(python), 1000))
    os.chown(venv, 0, 0)
    venv.chmod(0o777)
    assert "can be changed by users other than its owner" in str(python_problem(str(python), 1000))
    venv.chmod(0o1777)  # sticky, like /tmp: nobody else can replace root's file there
    assert python_problem(str(python), 1000) is None
    assert "not an absolute path" in str(python_problem("python3", 1000))


def test_apply_shows_each_file_before_writing_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "usagestatsd.service.d" / "usagestatsd-setup.conf"
    result = Plan(files={path: "[Service]\nUser=ray\n"})
    assert apply(result, lambda cmd: 0) == 0
    out = capsys.readouterr().out
    assert out.index("  | User=ray") < out.index(f"wrote {path}")
    assert out.startswith(f"writing {path}:\n  | [Service]\n")
