"""Notice a new Ray session when it appears: inotify on Ray's temp root, through ctypes.

Ray creates `session_<time>_<pid>` and repoints `session_latest` in its temp root when a
cluster starts. Watching that one directory (not its subdirectories) wakes the daemon only
then: it costs nothing while idle, unlike polling faster. While the temp root does not
exist yet, its parent is watched for its creation. Where inotify cannot be used (another
kernel, a seccomp filter, too many watches) `start()` says so and the daemon keeps its
periodic look (docs/design.md). No new dependency: libc's three inotify calls.
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
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

# The temp root itself: entries appearing, disappearing or renamed, and its own end.
ROOT_MASK = IN_CREATE | IN_MOVED_TO | IN_DELETE | IN_MOVED_FROM | IN_DELETE_SELF | IN_MOVE_SELF
# Its parent, while the temp root is missing: only entries appearing.
PARENT_MASK = IN_CREATE | IN_MOVED_TO
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name


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

    def __init__(self, temp_root: Path, on_change: Callable[[], None]) -> None:
        self.temp_root = temp_root
        self.on_change = on_change
        self.fd = -1
        self._libc: ctypes.CDLL | None = None
        self._wd = -1
        self._watching_root = False
        self._loop: asyncio.AbstractEventLoop | None = None

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
        try:
            data = os.read(self.fd, 64 * 1024)
        except BlockingIOError:
            return
        except OSError as exc:
            log.warning("session_watch.failed", problem=exc.strerror or str(exc))
            self.close()
            return
        relevant, rearm = False, False
        offset = 0
        while offset + _EVENT.size <= len(data):
            _, mask, _, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
            offset += _EVENT.size + length
            if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
                rearm = relevant = True
            elif self._watching_root:
                relevant = relevant or name.startswith(b"session_")
            elif name == os.fsencode(self.temp_root.name):
                rearm = relevant = True
        if rearm:
            problem = self._arm()
            if problem is not None:
                log.warning("session_watch.failed", problem=problem)
                self.close()
        if relevant:
            self.on_change()

    def close(self) -> None:
        """Stop watching (idempotent)."""
        if self.fd >= 0:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
