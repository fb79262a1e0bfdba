"""Notice a new Ray session when it appears: inotify on Ray's temp root, through ctypes.

Ray creates `session_<time>_<pid>` and repoints `session_latest` in its temp root when a
cluster starts. Watching that one directory (not its subdirectories) wakes the daemon only
then: it costs nothing while idle, unlike polling faster. While the temp root does not
exist yet, its parent is watched for its creation. Where inotify cannot be used (another
kernel, a seccomp filter, too many watches) `start()` says so and the daemon keeps its
periodic look (docs/design.md). No new dependency: libc's three inotify calls.

The temp root is world-writable, so any local user can make it change thousands of times
a second, and each look at it walks /proc. So changes are coalesced: the first one is
passed on at once, and then the descriptor is not read for `MIN_GAP_S` while the kernel
queues whatever else happens (an overflowing queue counts as a change); what queued is
then read in one go and passed on as one change. The daemon looks at most once per
`MIN_GAP_S` whatever the event rate, and wakes no more often than that to read events.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import struct
from collections.abc import Callable
from pathlib import Path

import structlog

log = structlog.get_logger()

IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

# The temp root itself: entries appearing, disappearing or renamed, and its own end.
ROOT_MASK = IN_CREATE | IN_MOVED_TO | IN_DELETE | IN_MOVED_FROM | IN_DELETE_SELF | IN_MOVE_SELF
# Its parent, while the temp root is missing: only entries appearing.
PARENT_MASK = IN_CREATE | IN_MOVED_TO
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name
# A new Ray session is still seen within a second; a neighbour's churn costs one look a second.
MIN_GAP_S = 1.0
_MAX_READS = 16  # of 64 KiB: more than the kernel queues by default (16,384 events)


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return libc


class SessionWatch:
    """Calls `on_change` when an entry of the temp root that may be a session changes."""

    def __init__(
        self, temp_root: Path, on_change: Callable[[], None], min_gap_s: float = MIN_GAP_S
    ) -> None:
        self.temp_root = temp_root
        self.on_change = on_change
        self.min_gap_s = min_gap_s
        self.fd = -1
        self._libc: ctypes.CDLL | None = None
        self._wd = -1
        self._watching_root = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._resume: asyncio.TimerHandle | None = None  # set while reading is paused

    def start(self, loop: asyncio.AbstractEventLoop) -> str | None:
        """Start watching; returns None, or why it cannot (the caller keeps its tick)."""
        self._libc = _libc()
        if self._libc is None:
            return "libc's inotify functions are not available"
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            return f"inotify_init1: {os.strerror(ctypes.get_errno())}"
        self.fd = fd
        problem = self._arm()
        if problem is not None:
            self.close()
            return problem
        self._loop = loop
        loop.add_reader(self.fd, self._readable)
        return None

    def _arm(self) -> str | None:
        """Watch the temp root, or its parent while it is missing."""
        assert self._libc is not None
        if self._wd >= 0:
            self._libc.inotify_rm_watch(self.fd, self._wd)  # may be gone already: harmless
            self._wd = -1
        for path, mask, is_root in (
            (self.temp_root, ROOT_MASK, True),
            (self.temp_root.parent, PARENT_MASK, False),
        ):
            wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask | IN_ONLYDIR)
            if wd >= 0:
                self._wd, self._watching_root = wd, is_root
                return None
            errno = ctypes.get_errno()
            if not is_root or errno not in (2, 20):  # ENOENT, ENOTDIR: try the parent
                return f"inotify_add_watch {path}: {os.strerror(errno)}"
        return None  # unreachable: the loop returns

    def _readable(self) -> None:
        relevant, rearm = self._drain()
        if self.fd < 0:
            return  # the watch failed while reading: closed, said so
        if rearm:
            problem = self._arm()
            if problem is not None:
                log.warning("session_watch.failed", problem=problem)
                self.close()
                return
        if relevant:
            self.on_change()
        # Paused after any read, relevant or not: a churn of other names wakes us no more.
        self._pause()

    def _drain(self) -> tuple[bool, bool]:
        """Read every queued event: (whether one may concern a session, whether to re-arm)."""
        relevant = rearm = False
        for _ in range(_MAX_READS):
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return relevant, rearm
            except OSError as exc:
                log.warning("session_watch.failed", problem=exc.strerror or str(exc))
                self.close()
                return False, False
            if not data:
                return relevant, rearm
            seen, again = self._parse(data)
            relevant, rearm = relevant or seen, rearm or again
        return relevant, rearm  # more is queued: read after the pause

    def _parse(self, data: bytes) -> tuple[bool, bool]:
        relevant, rearm = False, False
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
            offset += _EVENT.size + length
            if mask & IN_Q_OVERFLOW:
                relevant = True  # events were lost: any of them may have been a session
            elif wd != self._wd:
                # A watch removed by _arm (its IN_IGNORED comes afterwards): nothing to do.
                # Re-arming on it would remove the current watch, and so on, forever.
                continue
            elif mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
                rearm = relevant = True
            elif self._watching_root:
                relevant = relevant or name.startswith(b"session_")
            elif name == os.fsencode(self.temp_root.name):
                rearm = relevant = True
        return relevant, rearm

    def _pause(self) -> None:
        """Leave the descriptor unread for `min_gap_s`: events queue in the kernel meanwhile."""
        if self._loop is None or self.fd < 0:
            return
        self._loop.remove_reader(self.fd)
        self._resume = self._loop.call_later(self.min_gap_s, self._unpause)

    def _unpause(self) -> None:
        self._resume = None
        if self._loop is not None and self.fd >= 0:
            # Readable at once if anything queued meanwhile: read in one go, one change.
            self._loop.add_reader(self.fd, self._readable)

    def close(self) -> None:
        """Stop watching (idempotent)."""
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        if self.fd >= 0:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
