"""Find the Ray session to report on, and write its `usage_stats.json`.

The temp root (/tmp/ray) is shared and world-writable, so everything found there is
untrusted: `session_latest` is accepted only when it resolves to a real `session_*`
directory directly inside the temp root and owned by the temp root's owner (or root).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from usagestatsd.fileio import atomic_write, read_regular_file

LATEST_LINK = "session_latest"
USAGE_STATS_FILE = "usage_stats.json"


@dataclass(frozen=True)
class Session:
    """A Ray session directory, identified by name and inode (a replaced one is new)."""

    path: Path
    name: str
    device: int
    inode: int
    owner_uid: int

    @property
    def key(self) -> str:
        """What identifies this session in the state file."""
        return f"{self.name}@{self.device}:{self.inode}"

    @property
    def sockets_dir(self) -> Path:
        """Where Ray's dashboard modules (and the provider) put their Unix sockets."""
        return self.path / "sockets"

    @property
    def usage_stats_path(self) -> Path:
        """The local copy of the last report, where Ray's users look for it."""
        return self.path / USAGE_STATS_FILE


@dataclass(frozen=True)
class Discovery:
    """What was found under the temp root, and why a candidate was refused (for logs)."""

    session: Session | None
    refused: str | None = None


def _as_session(root: Path, root_uid: int, candidate: Path) -> Session | None:
    try:
        st = candidate.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or not candidate.name.startswith("session_"):
        return None
    if candidate.parent != root or st.st_uid not in (root_uid, 0):
        return None
    return Session(candidate, candidate.name, st.st_dev, st.st_ino, st.st_uid)


def find_session(temp_root: Path) -> Discovery:
    """The current session: `session_latest` if trustworthy, else the newest `session_*`."""
    try:
        root = temp_root.resolve(strict=True)
        root_st = root.stat()
    except (OSError, RuntimeError):
        return Discovery(None)
    if not stat.S_ISDIR(root_st.st_mode):
        return Discovery(None, f"{temp_root} is not a directory")
    refused = None
    link = root / LATEST_LINK
    if link.is_symlink():
        try:
            target = link.resolve(strict=True)
        except (OSError, RuntimeError):
            target = None  # dangling or looping
        session = _as_session(root, root_st.st_uid, target) if target else None
        if session:
            return Discovery(session)
        refused = f"{link} does not point to a session directory inside {root}"
    return Discovery(_newest(root, root_st.st_uid), refused)


def _newest(root: Path, root_uid: int) -> Session | None:
    # Names are session_<YYYY-MM-DD_HH-MM-SS_micro>_<pid>, so name order is start order.
    try:
        names = sorted(
            (e.name for e in os.scandir(root) if e.name.startswith("session_")), reverse=True
        )
    except OSError:
        return None
    for name in names:
        if name == LATEST_LINK:
            continue
        session = _as_session(root, root_uid, root / name)
        if session:
            return session
    return None


def still_there(session: Session) -> bool:
    """True while the directory found earlier is still the same directory."""
    try:
        st = session.path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) == (session.device, session.inode)


def write_usage_stats(session: Session, data: bytes) -> None:
    """Write `usage_stats.json` into the session directory, atomically, readable by all."""
    atomic_write(session.path, USAGE_STATS_FILE, data, mode=0o644)


def read_usage_stats(session: Session) -> bytes | None:
    """The current usage_stats.json (whoever wrote it), or None if absent or unreadable."""
    try:
        return read_regular_file(session.usage_stats_path, max_bytes=1 << 20)
    except OSError:
        return None
