"""systemd's side of $NOTIFY_SOCKET for tests: a bound datagram socket that collects what
the daemon sends (READY=1, STATUS=..., WATCHDOG=1, STOPPING=1)."""

from __future__ import annotations

import socket
from pathlib import Path


class NotifySocket:
    """A bound sd_notify datagram socket, like systemd's, collecting messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        """Every message so far."""
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    def statuses(self) -> list[str]:
        """Every STATUS= value received so far."""
        return [
            line.removeprefix("STATUS=")
            for m in self.drain()
            for line in m.splitlines()
            if line.startswith("STATUS=")
        ]
