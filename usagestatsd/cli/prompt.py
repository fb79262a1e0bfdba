"""Ray's consent prompt on a terminal: yes after 10 seconds in total, whatever is typed."""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable

PROMPT_TIMEOUT_S = 10.0
NOTICE = (
    "usagestatsd collects anonymous usage statistics of this Ray cluster (no personal data,\n"
    "no code; see https://docs.ray.io/en/master/cluster/usage-stats.html) and reports them\n"
    "hourly. Preview them with 'usagestatsd preview'; opt out with 'usagestatsd disable'.\n"
)
QUESTION = (
    "Enable usage stats collection? This prompt will auto-proceed in {left} seconds to avoid "
    "blocking start-up. Confirm [Y/n]: "
)


def ask(
    in_fd: int,
    out_fd: int,
    timeout_s: float = PROMPT_TIMEOUT_S,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Ask on a terminal; an invalid answer asks again without restarting the clock."""
    deadline = clock() + timeout_s
    os.write(out_fd, NOTICE.encode())
    while True:
        left = deadline - clock()
        if left <= 0:
            break
        os.write(out_fd, QUESTION.format(left=max(1, round(left))).encode())
        ready, _, _ = select.select([in_fd], [], [], left)
        if not ready:
            break
        line = os.read(in_fd, 1024).decode(errors="replace").strip().lower()
        if line in ("", "y", "yes"):
            os.write(out_fd, b"Usage stats collection enabled.\n")
            return True
        if line in ("n", "no"):
            os.write(out_fd, b"Usage stats collection disabled.\n")
            return False
        os.write(out_fd, b"Please answer y or n.\n")
    os.write(out_fd, b"\nNo answer: usage stats collection enabled (the policy's default).\n")
    return True
