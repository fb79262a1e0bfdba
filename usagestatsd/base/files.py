"""Safe file writes in directories other users can write to.

Every write goes to a fresh temporary file created with O_EXCL|O_NOFOLLOW in the target
directory (opened itself with O_NOFOLLOW), is fsynced, then renamed over the target.
rename() replaces a symlink or hard link planted at the target name instead of writing
through it, so no file outside our control is ever touched, and readers see either the old
or the new complete file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Container, Iterable
from pathlib import Path

MAX_READ_BYTES = 4 << 20


class UnsafeFileError(OSError):
    """A path was not what it must be (a symlink, not a directory, not a regular file)."""


class UntrustedOwnerError(UnsafeFileError):
    """A file is owned by a uid that may not decide what it is read for."""

    def __init__(self, owner: int, path: Path) -> None:
        super().__init__(errno.EPERM, f"owned by uid {owner}, not a trusted user", str(path))
        self.owner = owner


def open_directory(path: Path) -> int:
    """A file descriptor for `path`, refusing a symlink in its last component."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeFileError(
                exc.errno, "not a real directory (symlink or file)", str(path)
            ) from None
        raise


def atomic_write(
    directory: Path, name: str, data: bytes | Iterable[bytes], mode: int = 0o644
) -> None:
    """Replace `directory/name` with `data` (bytes or chunks) atomically, following no link."""
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"bad file name {name!r}")
    dir_fd = open_directory(directory)
    try:
        _write_in(dir_fd, name, data, mode)
    finally:
        os.close(dir_fd)


def give_to_directory_owner(fd: int, dir_fd: int) -> None:
    """As root, hand a file made in another user's directory to that user.

    The service may run as Ray's user in a directory of its own (the state directory), while
    root runs a command that rewrites a file there (`sudo usagestatsd forget`): a root-owned
    file would lock the service out of its own history. Nobody but root can give a file
    away, and a directory's owner can replace any file in it anyway, so this grants nothing.
    """
    if os.geteuid() != 0:
        return
    directory = os.fstat(dir_fd)
    if directory.st_uid != 0 and os.fstat(fd).st_uid != directory.st_uid:
        os.fchown(fd, directory.st_uid, directory.st_gid)


def _write_in(dir_fd: int, name: str, data: bytes | Iterable[bytes], mode: int) -> None:
    tmp_name = f".{name}.{os.getpid()}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp_name, flags, mode, dir_fd=dir_fd)
    try:
        try:
            give_to_directory_owner(fd, dir_fd)
            os.fchmod(fd, mode)  # the umask must not make the file unreadable for Ray's users
            for chunk in [data] if isinstance(data, bytes) else data:
                view = memoryview(chunk)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp_name, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)


def read_regular_file(
    path: Path,
    max_bytes: int = MAX_READ_BYTES,
    follow_symlinks: bool = False,
    owners: Container[int] | None = None,
) -> bytes:
    """Read a regular file (following no final symlink, unless told) up to `max_bytes`;
    with `owners`, only one owned by one of them (checked on the descriptor read)."""
    nofollow = 0 if follow_symlinks else os.O_NOFOLLOW
    fd = os.open(path, os.O_RDONLY | nofollow | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        import stat

        st = os.fstat(fd)
        if owners is not None and st.st_uid not in owners:
            raise UntrustedOwnerError(st.st_uid, path)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFileError(errno.EINVAL, "not a regular file", str(path))
        chunks = []
        remaining = max_bytes + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise UnsafeFileError(errno.EFBIG, f"larger than {max_bytes} bytes", str(path))
    return data
