"""Whose Ray `usagestatsd setup` may act on: it writes `User=` and Ray's Python from it.

Any local user can run a process whose command line looks like Ray's dashboard, make a temp
root and a session directory of their own, and run a `gcs_server --session-name=...`: names
and command lines are forgeable. What no user can forge is the uid the kernel gives their
processes and files. So a dashboard counts only when its uid is

- trusted already: root, setup's own uid, the user the daemon's unit runs as, or
  `ray_user` (in the settings or the unit's environment); or
- a plausible Ray user, while none is named yet (no `ray_user`, the unit runs as root):
  a named account, not the overflow uid
  `nobody` (65534), with a home directory of its own, that owns the temp root, the
  session directory directly inside it, and a process running that session
  (`--session-name=`, as every Ray version's gcs_server and raylet do).

Everything else is shown as ignored, and nothing is planned from it. Ray's Python (run by
the provider as Ray's user) must be a regular file reached only through paths that root or
Ray's user own and no one else can write.
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Collection
from pathlib import Path

from usagestatsd.facts.procfs import SESSION_ARG, cmdline, pids
from usagestatsd.facts.ray_head import RayHead, process_uid

OVERFLOW_UID = 65534


def uid_of_user(name: str) -> int | None:
    """The uid of a user name, or None if it has no account here."""
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def head_refusal(
    head: RayHead, trusted: Collection[int], proc: Path, new_user_allowed: bool = True
) -> str | None:
    """None if setup may take `head`'s user for Ray's, else why not (for the operator).

    `new_user_allowed` is False once Ray's user is named (`ray_user`, the unit's `User=`):
    then no other user is taken for it.
    """
    if head.uid in trusted:
        return None
    if not new_user_allowed:
        return "it is not the Ray user already set (ray_user, or the daemon's User=)"
    if head.uid == OVERFLOW_UID:
        return "uid 65534 (nobody) is never Ray's user"
    try:
        account = pwd.getpwuid(head.uid)
    except KeyError:
        return f"uid {head.uid} has no account on this machine"
    who = account.pw_name
    if not _owned_dir(Path(account.pw_dir), head.uid):
        return f"{who} has no home directory of its own"
    session = Path(head.session_dir) if head.session_dir else None
    if not _owned_dir(Path(head.temp_root), head.uid):
        return f"its temp root {head.temp_root} is not {who}'s"
    if session is None or session.parent != Path(head.temp_root):
        return "it names no session directory inside its temp root"
    if not _owned_dir(session, head.uid):
        return f"its session directory {session} is not {who}'s"
    if not _runs_session(head.uid, session.name, proc):
        return f"no process of {who} runs its session (gcs_server, raylet: --session-name=)"
    return None


def _owned_dir(path: Path, uid: int) -> bool:
    try:
        st = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == uid


def _runs_session(uid: int, name: str, proc: Path) -> bool:
    wanted = SESSION_ARG + name
    for pid in pids(proc):
        if process_uid(proc / str(pid)) == uid and wanted in cmdline(pid, proc):
            return True
    return False


def python_problem(python: str, ray_uid: int) -> str | None:
    """None if the provider may run `python` as Ray's user, else why not.

    Every directory on the way and the file (and, for a venv's symlink, its target) must be
    owned by root or Ray's user and writable by no one else (a sticky directory excepted).
    """
    owners = {0, ray_uid}
    path = Path(python)
    if not path.is_absolute():
        return f"{python} is not an absolute path"
    for place in (path, Path(os.path.realpath(path))):
        for part in (place, *place.parents):
            problem = _unsafe(part, owners)
            if problem:
                return problem
    if not os.path.isfile(path):
        return f"{python} is not a regular file"
    return None


def _unsafe(path: Path, owners: Collection[int]) -> str | None:
    try:
        st = path.lstat()
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if st.st_uid not in owners:
        return f"{path} is owned by uid {st.st_uid}, neither root nor Ray's user"
    if stat.S_ISLNK(st.st_mode):
        return None  # a symlink's own mode means nothing; its target is checked too
    sticky = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
    if st.st_mode & 0o022 and not sticky:
        return f"{path} can be changed by users other than its owner"
    return None
