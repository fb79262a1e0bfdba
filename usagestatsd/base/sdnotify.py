"""sd_notify: READY, STATUS, WATCHDOG and STOPPING; silently nothing outside systemd."""

from __future__ import annotations

import os
import socket


class Notifier:
    """Sends sd_notify datagrams to $NOTIFY_SOCKET (path or abstract '@name')."""

    def __init__(self, notify_socket: str | None) -> None:
        address = notify_socket or None
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        self._address = address
        self._sock: socket.socket | None = None

    @property
    def active(self) -> bool:
        """True when running under a service manager that listens for notifications."""
        return self._address is not None

    def _send(self, message: str) -> None:
        if self._address is None:
            return
        try:
            if self._sock is None:
                # Non-blocking: a manager that reads slowly (the queue holds ~10 datagrams)
                # must never stall the event loop; a dropped STATUS or ping is harmless.
                self._sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                )
            self._sock.sendto(message.encode("utf-8", "replace"), self._address)
        except OSError:
            # The manager went away or its queue is full: notifications are best effort.
            pass

    def ready(self, status: str) -> None:
        """Tell the manager start-up is complete (Type=notify)."""
        self._send(f"READY=1\nSTATUS={_one_line(status)}\nMAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        """Set the line `systemctl status` shows."""
        self._send(f"STATUS={_one_line(status)}")

    def watchdog(self) -> None:
        """Prove liveness to WatchdogSec=."""
        self._send("WATCHDOG=1")

    def stopping(self, status: str = "Stopping") -> None:
        """Say a clean stop has begun."""
        self._send(f"STOPPING=1\nSTATUS={_one_line(status)}")

    def close(self) -> None:
        """Release the datagram socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]


def watchdog_interval(watchdog_usec: int | None, watchdog_pid: int | None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half the timeout), or None when there is no watchdog."""
    if not watchdog_usec:
        return None
    if watchdog_pid is not None and watchdog_pid != os.getpid():
        return None
    return watchdog_usec / 2_000_000
