"""Find the Ray session to report on, and write its `usage_stats.json`.

The temp root (/tmp/ray) is shared, and Ray makes it and every session directory 0777
without the sticky bit, so anything found there may be another local user's doing
(docs/security.md). What is trusted is who *owns* it: the temp root, the
`session_latest` link and a session directory are used only when owned by a trusted uid
(root, this daemon's user, or the configured `ray_user`), and a session only directly
inside the temp root.

`session_latest` is Ray's word for the newest session, but any user can re-point it. A
session is *live* when a process of a trusted uid runs with `--session-name=<its name>`
on its command line (every Ray version's gcs_server and raylet do; read from /proc, which
nobody can forge for another uid). When the link's target is not live and another trusted
session is, the newest live one is followed.
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from usagestatsd.base.files import atomic_write, read_regular_file
from usagestatsd.facts.procfs import PROC, SESSION_ARG, cmdline, owner, pids

LATEST_LINK = "session_latest"
USAGE_STATS_FILE = "usage_stats.json"


# Below this uid, Debian's accounts are system accounts (root, `ray` made with useradd
# --system): naming them identifies no person. A person's login name is never logged.
_FIRST_PERSONAL_UID = 1000


_OVERFLOW_UID = 65534


def _in_user_namespace() -> bool:
    """Whether uids are mapped (the unit's PrivateUsers=): then others show as 65534."""
    try:
        with open("/proc/self/uid_map", encoding="ascii") as handle:
            return handle.read().split() != ["0", "0", "4294967295"]
    except OSError:
        return False


def user_label(uid: int) -> str:
    """`ray (uid 999)` for root and system accounts; `uid 1000` for anyone else."""
    if uid == _OVERFLOW_UID and _in_user_namespace():
        return "a user outside the service's sandbox (shown as uid 65534)"
    if uid >= _FIRST_PERSONAL_UID and uid != _OVERFLOW_UID:
        return f"uid {uid}"
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def untrusted_text(temp_root: Path, owner: int) -> str:
    """What to tell an operator whose Ray runs as a user the daemon was not told of."""
    return (
        f"Ray's files under {temp_root} belong to {user_label(owner)}, whom usagestatsd "
        "does not trust: if Ray runs as that user, run: sudo usagestatsd setup"
    )


def trusted_uids(ray_user: int | None = None) -> frozenset[int]:
    """Who may own Ray's directories and serve its sockets: root, us, and Ray's user."""
    uids = {0, os.geteuid()}
    if ray_user is not None:
        uids.add(ray_user)
    return frozenset(uids)


@dataclass(frozen=True)
class Session:
    """A Ray session directory, identified by name and inode (a replaced one is new)."""

    path: Path
    name: str
    device: int
    inode: int
    owner_uid: int
    # The same directory under the temp root as configured (symlinks unresolved): the
    # path Ray itself uses, so the one its sockets are bound at.
    alias: Path | None = None

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

    def socket_aliases(self, name: str) -> tuple[str, ...]:
        """Other spellings of socket `name`'s path that Ray may have bound it at."""
        return (str(self.alias / "sockets" / name),) if self.alias else ()


@dataclass(frozen=True)
class Discovery:
    """What was found under the temp root, and why a candidate was refused (for logs)."""

    session: Session | None
    refused: str | None = None
    # Ray's directories belong to a uid that is not trusted (a Ray run as a user that the
    # daemon was not told of: `usagestatsd setup` finds and sets it).
    untrusted_owner: int | None = None


def _as_session(
    root: Path, trusted: Collection[int], candidate: Path, alias_root: Path
) -> Session | None:
    try:
        st = candidate.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or not candidate.name.startswith("session_"):
        return None
    if candidate.parent != root or st.st_uid not in trusted:
        return None
    alias = alias_root / candidate.name
    return Session(
        candidate,
        candidate.name,
        st.st_dev,
        st.st_ino,
        st.st_uid,
        alias if alias != candidate else None,
    )


def live_session_names(trusted: Collection[int], proc: Path = PROC) -> frozenset[str]:
    """Session names that a process of a trusted uid runs for (`--session-name=NAME`)."""
    names: set[str] = set()
    for pid in pids(proc):
        if owner(pid, proc) not in trusted:
            continue
        for arg in cmdline(pid, proc):  # [] once gone, or when not ours to read
            if arg.startswith(SESSION_ARG):
                names.add(arg.removeprefix(SESSION_ARG))
    return frozenset(names)


def find_session(
    temp_root: Path, trusted: Collection[int] | None = None, proc: Path = PROC
) -> Discovery:
    """The current session: `session_latest` if trusted and live, else the newest live one.

    With no live session at all (Ray stopped), a trusted `session_latest`, else the newest
    trusted `session_*`: the last session is still the one to speak of.
    """
    trusted = trusted_uids() if trusted is None else trusted
    try:
        root = temp_root.resolve(strict=True)
        root_st = root.stat()
    except (OSError, RuntimeError):
        return Discovery(None)
    if not stat.S_ISDIR(root_st.st_mode):
        return Discovery(None, f"{temp_root} is not a directory")
    if root_st.st_uid not in trusted:
        # Whoever owns the temp root can swap anything in it: nothing there is Ray's word.
        return Discovery(
            None,
            f"{temp_root} is owned by {user_label(root_st.st_uid)}, not by Ray's user",
            root_st.st_uid,
        )
    alias_root = Path(os.path.abspath(temp_root))
    latest, refused = _latest(root, trusted, alias_root)
    live = live_session_names(trusted, proc)
    if latest is not None and latest.name in live:
        return Discovery(latest)
    # Only names a trusted process runs for are looked at: the directory itself may hold
    # any number of entries another user made.
    for name in sorted(live, reverse=True):
        session = _as_session(root, trusted, root / name, alias_root)
        if session is not None:
            if latest is not None:
                refused = f"{root / LATEST_LINK} points at {latest.name}, which no Ray process runs"
            return Discovery(session, refused)
    if latest is not None:
        return Discovery(latest)
    newest = _newest(root, trusted, alias_root)
    return Discovery(newest, refused, None if newest else _link_owner(root, trusted))


def _link_owner(root: Path, trusted: Collection[int]) -> int | None:
    """The owner of `session_latest` when it is not trusted (None otherwise)."""
    try:
        owner = (root / LATEST_LINK).lstat().st_uid
    except OSError:
        return None
    return None if owner in trusted else owner


def _latest(
    root: Path, trusted: Collection[int], alias_root: Path
) -> tuple[Session | None, str | None]:
    link = root / LATEST_LINK
    try:
        link_st = link.lstat()
    except OSError:
        return None, None
    if not stat.S_ISLNK(link_st.st_mode):
        return None, f"{link} is not a symlink"
    if link_st.st_uid not in trusted:
        return None, f"{link} is owned by {user_label(link_st.st_uid)}, not by Ray's user"
    try:
        target = link.resolve(strict=True)
    except (OSError, RuntimeError):
        target = None  # dangling or looping
    session = _as_session(root, trusted, target, alias_root) if target else None
    if session is None:
        return (
            None,
            f"{link} does not point to a session directory inside {root} owned by Ray's user",
        )
    return session, None


def _newest(root: Path, trusted: Collection[int], alias_root: Path) -> Session | None:
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
        session = _as_session(root, trusted, root / name, alias_root)
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
