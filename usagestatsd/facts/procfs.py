"""Processes as /proc shows them: the one walker, their command lines, and their options.

Every module that looks at other processes (the dashboard's, Ray's sessions, `setup`'s
heads, the holders of a socket) reads them here, with the same bounds.
"""

from __future__ import annotations

import os
from pathlib import Path

from usagestatsd.base.files import read_regular_file

PROC = Path("/proc")
MAX_PROC_FILE = 1 << 20  # a command line or environment longer than this is not Ray's
SESSION_ARG = "--session-name="  # how each of Ray's processes names its session


def pids(proc: Path = PROC) -> list[int]:
    """The processes this user may see, lowest pid first ([] without a /proc)."""
    try:
        return sorted(int(e.name) for e in os.scandir(proc) if e.name.isdigit())
    except OSError:
        return []


def read_proc_file(path: Path) -> bytes | None:
    """A /proc or session file, or None: never through a symlink, and only a regular file.

    The session directory is 0777: another user can put a FIFO (an open would wait for a
    writer for ever) or a symlink where a file is expected.
    """
    try:
        return read_regular_file(path, MAX_PROC_FILE)
    except (OSError, ValueError):
        return None


def split_nul(raw: bytes) -> list[str]:
    """A /proc cmdline or environ: NUL-separated items (a trailing NUL ends the last)."""
    if not raw:
        return []
    parts = raw.split(b"\0")
    if parts[-1] == b"":
        parts.pop()
    return [p.decode("utf-8", "surrogateescape") for p in parts]


def cmdline(pid: int, proc: Path = PROC) -> list[str]:
    """A process's command line as its arguments ([] if gone or not ours to read)."""
    return split_nul(read_proc_file(proc / str(pid) / "cmdline") or b"")


def owner(pid: int, proc: Path = PROC) -> int | None:
    """The process's effective uid (/proc/<pid> is owned by it); None once it is gone."""
    try:
        return os.stat(proc / str(pid)).st_uid
    except OSError:
        return None


def option(args: list[str], name: str) -> str | None:
    """`--name=value` or `--name value` in an argument list; the last one wins, as with
    argparse (which is how Ray's processes read their own command line)."""
    value = None
    for i, arg in enumerate(args):
        if arg.startswith(name + "="):
            value = arg[len(name) + 1 :]
        elif arg == name and i + 1 < len(args):
            value = args[i + 1]
    return value
