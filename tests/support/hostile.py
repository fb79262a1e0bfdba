"""Run code as another local user: the hostile neighbour of a head node, for real.

CI runs as root, so an attack is run by a forked child that drops to uid/gid `nobody`
(65534) before doing anything: the kernel then sees a real unprivileged user. (Exec'ing a
new interpreter as nobody is not possible where the venv lives under root's 0700 home.)
"""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

NOBODY = 65534

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="acting as another local user (nobody) needs root"
)


def open_dir() -> Path:
    """A fresh world-writable directory under /tmp, reachable by every uid (as Ray's are)."""
    path = Path(tempfile.mkdtemp(prefix="usd-", dir="/tmp"))
    path.chmod(0o777)
    return path


def _drop_to(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def as_user(action: Callable[[], str], uid: int = NOBODY) -> str:
    """Run `action` in a forked child as `uid`; its result (or exception) as text."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            _drop_to(uid)
            try:
                text = action()
            except Exception as exc:
                text = f"{type(exc).__name__}: {exc}"
            os.write(write_end, text.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as pipe:
        return pipe.read().decode()


@contextmanager
def running_as(
    serve: Callable[[Callable[[str], None]], None], uid: int = NOBODY
) -> Iterator[tuple[int, str]]:
    """Run `serve(ready)` in a forked child as `uid` until the block ends.

    `serve` calls `ready(text)` once it is listening (or has done its setup); the block
    gets (child pid, that text). The child is killed and reaped when the block exits.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            _drop_to(uid)

            def ready(text: str) -> None:
                os.write(write_end, text.encode() + b"\n")

            serve(ready)
        except BaseException as exc:  # said on stderr: the parent only sees "not ready"
            os.write(2, f"running_as({uid}): {type(exc).__name__}: {exc}\n".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as pipe:
            line = pipe.readline().decode().strip()
        if not line:
            raise RuntimeError(f"the child acting as uid {uid} failed before it was ready")
        yield pid, line
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
