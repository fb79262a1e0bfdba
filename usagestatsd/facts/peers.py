"""Who is at the other end of a local socket: the kernel's word, never the file system's.

Ray's temp root, session directories and `sockets/` are world-writable (0777, no sticky
bit) and the intake is a loopback port every local user reaches, so a socket's path, its
owner or the port it listens on proves nothing about who serves it. What the kernel says
about a connected socket does:

- a Unix stream socket: `SO_PEERCRED` (the server's uid and pid as of `listen()`), and
  `getpeername()` (the exact path the server bound, so a symlink swapped in between a
  check and the connect is seen: the path differs);
- a loopback TCP connection: the other end's own socket, found by its exact pair of
  addresses, gives its owner uid and its inode (netlink sock_diag, facts/sockdiag.py, where this
  process may use netlink; else its row in `/proc/net/tcp{,6}`); the processes holding that
  inode are in `/proc/<pid>/fd`.

All of it is read after the connection exists, so nothing can change between the check
and the use.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from usagestatsd.facts import sockdiag
from usagestatsd.facts.procfs import PROC, pids

_TCP_TABLES = ("tcp", "tcp6")
_LISTEN = "0A"  # the state column of a listening socket
_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Peer:
    """The other end of a connection: owner uid, pid if known, socket inode if known."""

    uid: int
    pid: int | None = None
    inode: int | None = None


def unix_peer(sock: socket.socket) -> Peer:
    """The credentials of the process that created the listening Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", raw)
    return Peer(uid=uid, pid=pid or None)


def unix_peer_path(sock: socket.socket) -> str:
    """The path the server bound its socket to ('' for an unnamed or abstract socket)."""
    name = sock.getpeername()
    return name if isinstance(name, str) else ""


def _address(hex_addr: str) -> tuple[_IPAddress, int]:
    """Decode one `ADDR:PORT` of /proc/net/tcp{,6}; v4-mapped v6 addresses become v4."""
    addr_hex, port_hex = hex_addr.split(":")
    raw = bytes.fromhex(addr_hex)
    # The kernel prints each 32-bit word in host byte order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)) if raw else raw
    if len(words) == 4:
        return ipaddress.IPv4Address(words), int(port_hex, 16)
    v6 = ipaddress.IPv6Address(words)
    return (v6.ipv4_mapped or v6), int(port_hex, 16)


_normalise = sockdiag.endpoint


def _tcp_rows(proc: Path) -> Iterator[list[str]]:
    for table in _TCP_TABLES:
        # /proc/self/net first: the shipped unit's ProcSubset=pid hides /proc/net, not the
        # per-process view of the same network namespace.
        for path in (proc / "self" / "net" / table, proc / "net" / table):
            try:
                with open(path, encoding="ascii") as f:
                    next(f, None)  # the header line
                    rows = [line.split() for line in f]
            except OSError:
                continue  # no IPv6 in this kernel, or no /proc: nothing to find there
            yield from rows
            break


def tcp_socket_owner(
    own: tuple[str, int] | tuple[str, int, int, int],
    other: tuple[str, int] | tuple[str, int, int, int],
    proc: Path = PROC,
) -> Peer | None:
    """Who serves a connection this daemon made: pass (peername, sockname).

    The other end's socket is the one bound at our peer's address and connected to ours.
    A connection the server has not accept()ed yet has no file (inode 0, uid 0) in the
    table: then the one socket listening at `own` answers for it, since only its holder
    can ever accept it.
    """
    want_own, want_other = _normalise(own), _normalise(other)
    listeners: list[Peer] = []
    for row in _tcp_rows(proc):
        if len(row) < 10:
            continue
        try:
            local, remote = _address(row[1]), _address(row[2])
            peer = Peer(uid=int(row[7]), inode=int(row[9]))
        except ValueError:
            continue  # a row this parser does not understand is not our peer
        if local == want_own and remote == want_other and peer.inode:
            return peer
        if row[3] == _LISTEN and _serves(local, want_own):
            listeners.append(peer)
    # Not accepted yet: the listener, if exactly one could accept it (SO_REUSEPORT: none).
    return listeners[0] if len(listeners) == 1 else None


def tcp_client_owner(
    client: tuple[str, int] | tuple[str, int, int, int],
    server: tuple[str, int] | tuple[str, int, int, int],
    proc: Path = PROC,
) -> Peer | None:
    """Who holds the client end of a connection this daemon accepted: (peername, sockname).

    Only that one socket answers, found by its exact addresses: never a listener or any
    other socket at the same port (whoever listens there did not connect). None when no
    such socket exists any more. A client that closed its socket leaves an entry no process
    holds (inode 0, in the Peer): it proves nothing about who sent what.
    """
    want_client, want_server = _normalise(client), _normalise(server)
    try:
        found = sockdiag.lookup(want_client, want_server)
    except sockdiag.DiagUnavailable:
        return _table_row(want_client, want_server, proc)
    return None if found is None else Peer(uid=found.uid, inode=found.inode)


def _table_row(
    own: tuple[_IPAddress, int], other: tuple[_IPAddress, int], proc: Path
) -> Peer | None:
    """The row of /proc/net/tcp{,6} with exactly these addresses (where netlink is not
    available: a read of the whole table, in proportion to the sockets on the machine)."""
    for row in _tcp_rows(proc):
        if len(row) < 10 or row[3] == _LISTEN:
            continue
        try:
            if (_address(row[1]), _address(row[2])) == (own, other):
                return Peer(uid=int(row[7]), inode=int(row[9]))
        except ValueError:
            continue  # a row this parser does not understand is not our peer
    return None


def tcp_listener_owner(address: tuple[str, int], proc: Path = PROC) -> Peer | None:
    """Who holds the socket listening at `address` (say, a port this daemon could not bind)."""
    want = _normalise(address)
    try:
        found = sockdiag.listener(want)
    except sockdiag.DiagUnavailable:
        found = None
        for row in _tcp_rows(proc):
            try:
                local = _address(row[1])
                same_family = local[0].version == want[0].version
                if row[3] == _LISTEN and same_family and _serves(local, want):
                    return Peer(uid=int(row[7]), inode=int(row[9]))
            except (ValueError, IndexError):
                continue
    return None if found is None else Peer(uid=found.uid, inode=found.inode)


def _serves(listening: tuple[_IPAddress, int], address: tuple[_IPAddress, int]) -> bool:
    """Whether a socket listening at `listening` accepts connections to `address`."""
    (ip, port), (want_ip, want_port) = listening, address
    return port == want_port and (ip == want_ip or ip.is_unspecified)


def tcp_peer(sock: socket.socket, proc: Path = PROC) -> Peer | None:
    """Who holds the other end of a connected loopback TCP socket (None if not local).

    Until the server has accepted the connection, the kernel shows its end with inode 0
    (no process holds it yet): ask once the server has answered.
    """
    return tcp_socket_owner(sock.getpeername(), sock.getsockname(), proc)


def pids_holding(inode: int, proc: Path = PROC) -> list[int]:
    """The processes with an open descriptor on socket `inode` (those this user may see)."""
    target = f"socket:[{inode}]"
    holders: list[int] = []
    for pid in pids(proc):
        try:
            fds = os.scandir(proc / str(pid) / "fd")
        except OSError:
            continue  # gone, or another user's process we may not look into
        with fds:
            for fd in fds:
                try:
                    if os.readlink(fd.path) == target:
                        holders.append(pid)
                        break
                except OSError:
                    continue
    return holders
