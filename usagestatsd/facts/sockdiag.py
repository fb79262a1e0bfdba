"""The kernel's word on one TCP socket, looked up by its exact addresses (netlink sock_diag).

`ss` asks the same way: a NETLINK_SOCK_DIAG request SOCK_DIAG_BY_FAMILY naming one socket
by its four addresses (no dump, cookie INET_DIAG_NOCOOKIE). The kernel finds it in its hash
tables, so the cost does not grow with the number of sockets on the machine, unlike a read
of /proc/net/tcp. Any user may ask; a uid outside our user namespace reads as the overflow
uid, as in /proc.

When no connected socket has those addresses, the kernel's lookup goes on to the socket
*listening* at the local address (as for an incoming SYN): such an answer, or any whose
addresses are not exactly the ones asked for, is not the socket asked about.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from itertools import count

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLMSG_ERROR = 0x2
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
TCP_LISTEN = 10
ALL_STATES = 0xFFFFFFFF
REPLY_TIMEOUT_S = 1.0  # the kernel answers within the send; this only bounds a surprise

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
# inet_diag_req_v2: family, protocol, ext, pad, states; then inet_diag_sockid.
_REQUEST = struct.Struct("=BBBBI")
_SOCKID = struct.Struct(">HH16s16s")  # ports and addresses are in network byte order
_SOCKID_TAIL = struct.Struct("=III")  # interface, cookie (two words)
# inet_diag_msg: family, state, timer, retrans; the sockid (48 bytes); expires, rqueue,
# wqueue, uid, inode.
_MSG_HEAD = struct.Struct("=BBBB")
_MSG_TAIL = struct.Struct("=IIIII")
_SOCKID_SIZE = _SOCKID.size + _SOCKID_TAIL.size
_sequence = count(1)

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Endpoint = tuple[_IPAddress, int]


class DiagUnavailable(OSError):
    """This process cannot ask the kernel over netlink (no AF_NETLINK here: a seccomp
    filter such as RestrictAddressFamilies=, or a kernel without sock_diag)."""


@dataclass(frozen=True)
class DiagAnswer:
    """What the kernel says of one socket: its state, owner uid and inode (0: no file)."""

    state: int
    uid: int
    inode: int


def endpoint(addr: tuple[str, int] | tuple[str, int, int, int]) -> Endpoint:
    """A socket address as (ip, port); a v4-mapped IPv6 address becomes the IPv4 one."""
    ip = ipaddress.ip_address(addr[0].split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip, int(addr[1])


def _packed(ip: _IPAddress) -> bytes:
    return ip.packed.ljust(16, b"\0")


def _request(local: Endpoint, remote: Endpoint, sequence: int) -> bytes:
    family = socket.AF_INET if local[0].version == 4 else socket.AF_INET6
    body = (
        _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, ALL_STATES)
        + _SOCKID.pack(local[1], remote[1], _packed(local[0]), _packed(remote[0]))
        + _SOCKID_TAIL.pack(0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE)
    )
    return (
        _HEADER.pack(_HEADER.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, sequence, 0)
        + body
    )


def _addresses(family: int, sockid: bytes) -> tuple[Endpoint, Endpoint]:
    sport, dport, src, dst = _SOCKID.unpack_from(sockid)
    size = 4 if family == socket.AF_INET else 16

    def one(raw: bytes, port: int) -> Endpoint:
        return endpoint((str(ipaddress.ip_address(raw[:size])), port))

    return one(src, sport), one(dst, dport)


def _parse(reply: bytes, sequence: int) -> tuple[DiagAnswer, Endpoint, Endpoint] | None:
    if len(reply) < _HEADER.size:
        return None
    _length, kind, _flags, seq, _port = _HEADER.unpack_from(reply)
    if seq != sequence or kind == NLMSG_ERROR:
        return None  # ENOENT: no socket at all by those addresses
    body = reply[_HEADER.size :]
    if kind != SOCK_DIAG_BY_FAMILY or len(body) < _MSG_HEAD.size + _SOCKID_SIZE + _MSG_TAIL.size:
        return None
    family, state, _timer, _retrans = _MSG_HEAD.unpack_from(body)
    local, remote = _addresses(family, body[_MSG_HEAD.size : _MSG_HEAD.size + _SOCKID_SIZE])
    *_, uid, inode = _MSG_TAIL.unpack_from(body, _MSG_HEAD.size + _SOCKID_SIZE)
    return DiagAnswer(state=state, uid=uid, inode=inode), local, remote


def _ask(local: Endpoint, remote: Endpoint) -> tuple[DiagAnswer, Endpoint, Endpoint] | None:
    try:
        sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG
        )
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            raise  # out of resources for a moment: not a reason to read /proc instead
        raise DiagUnavailable(
            exc.errno, f"netlink sock_diag: {os.strerror(exc.errno or 0)}"
        ) from exc
    sequence = next(_sequence) & 0xFFFFFFFF
    with sock:
        sock.settimeout(REPLY_TIMEOUT_S)
        sock.send(_request(local, remote, sequence))
        return _parse(sock.recv(8192), sequence)


def lookup(local: Endpoint, remote: Endpoint) -> DiagAnswer | None:
    """The TCP socket bound at `local` and connected to `remote` (None: there is none).

    Both must be of one family (an IPv4 address and its v4-mapped form are one). Raises
    DiagUnavailable when netlink cannot be used here.
    """
    if local[0].version != remote[0].version:
        return None  # no socket connects an IPv4 address to an IPv6 one
    found = _ask(local, remote)
    if found is None:
        return None
    answer, found_local, found_remote = found
    if answer.state == TCP_LISTEN or (found_local, found_remote) != (local, remote):
        return None  # the listener the lookup fell back to, not the socket asked about
    return answer


def listener(local: Endpoint) -> DiagAnswer | None:
    """The socket that accepts TCP connections to `local` now, if any (the kernel's own
    choice: one bound there, or at the wildcard address of its family). Raises
    DiagUnavailable when netlink cannot be used here."""
    anywhere = ipaddress.ip_address("0.0.0.0" if local[0].version == 4 else "::")
    found = _ask(local, (anywhere, 0))
    if found is None or found[0].state != TCP_LISTEN or found[1][1] != local[1]:
        return None
    return found[0]
