"""Where the intake's listening socket comes from, and who holds its port when it is not ours.

Packaged, systemd holds the port (usagestatsd-intake.socket) and passes the listening socket
to the daemon at every start (LISTEN_FDS, sd_listen_fds(3)): the port is never free while
the daemon restarts, so no other local user can take it in between and receive Ray's
reports. Without socket activation (`make run`, the tests, a shell) the daemon binds the
port itself. When someone else already holds it, the kernel says who (facts/peers.py).
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import MutableMapping

import structlog

from usagestatsd.facts.peers import tcp_listener_owner
from usagestatsd.facts.sockdiag import endpoint

log = structlog.get_logger()

SD_LISTEN_FDS_START = 3
INTAKE_FD_NAME = "intake"  # FileDescriptorName= in usagestatsd-intake.socket
_ACTIVATION_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
DRAIN_AT_MOST = 1024  # a bound on the loop; the backlog is 64


class PortTaken(OSError):
    """The intake's port is held by another socket: `holder_uid` is its owner (None: unknown)."""

    def __init__(self, problem: str, holder_uid: int | None) -> None:
        super().__init__(errno.EADDRINUSE, problem)
        self.holder_uid = holder_uid


def inherited_sockets(environ: MutableMapping[str, str]) -> dict[str, list[socket.socket]]:
    """The listening sockets systemd passed to this process, by name (as sd_listen_fds).

    The variables are removed, so that no process this one starts takes them for its own.
    """
    values = {name: environ.pop(name, "") for name in _ACTIVATION_VARIABLES}
    if values["LISTEN_PID"] != str(os.getpid()) or not values["LISTEN_FDS"].isdigit():
        return {}
    names = values["LISTEN_FDNAMES"].split(":") if values["LISTEN_FDNAMES"] else []
    found: dict[str, list[socket.socket]] = {}
    for index in range(int(values["LISTEN_FDS"])):
        fd = SD_LISTEN_FDS_START + index
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            continue  # not a socket: nothing this daemon can listen with
        sock.set_inheritable(False)
        name = names[index] if index < len(names) else "unknown"
        found.setdefault(name, []).append(sock)
    return found


def take_inherited(inherited: list[socket.socket], host: str, port: int) -> socket.socket | None:
    """The passed socket listening at (host, port); the others are closed with a warning."""
    chosen: socket.socket | None = None
    for sock in inherited:
        if chosen is None and _listens_at(sock, host, port):
            chosen = sock
            continue
        log.warning(
            "beside_ray.intake_socket_unused",
            problem="the socket systemd passed does not listen at the ray_intake address",
            fix="make ListenStream= of usagestatsd-intake.socket the ray_intake address",
        )
        sock.close()
    return chosen


def _ip(host: str) -> str:
    return "127.0.0.1" if host == "localhost" else host  # as create_server binds it


def _listens_at(sock: socket.socket, host: str, port: int) -> bool:
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        return bool(listening) and endpoint(sock.getsockname()) == endpoint((_ip(host), port))
    except (OSError, ValueError):
        return False


def bind(host: str, port: int, backlog: int) -> socket.socket:
    """Listen at (host, port) ourselves; PortTaken names who holds it when it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=backlog)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        holder = tcp_listener_owner((_ip(host), port))
        uid = None if holder is None else holder.uid
        raise PortTaken(held_by(uid), uid) from None


def held_by(uid: int | None) -> str:
    """'address in use by uid N' (the kernel's word); no user name: a log line names no one."""
    if uid is None:
        return "address in use (by a socket this daemon cannot see)"
    return f"address in use by uid {uid}"


def drain_passed(environ: MutableMapping[str, str]) -> int:
    """Collection disabled: close the connections waiting on systemd's sockets, unanswered.

    systemd starts the service again for as long as a connection waits on its socket: a
    disabled daemon that left one there would be restarted until systemd gave up on the
    socket and let go of the port. Returns how many were closed.
    """
    closed = 0
    for socks in inherited_sockets(environ).values():
        for sock in socks:
            with sock:
                sock.setblocking(False)
                while closed < DRAIN_AT_MOST:
                    try:
                        conn, _ = sock.accept()
                    except OSError:
                        break  # none waiting (or no listening socket): done
                    conn.close()
                    closed += 1
    return closed
