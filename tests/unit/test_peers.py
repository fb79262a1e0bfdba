"""peers: who is at the other end of a local socket, as the kernel says, with real peers."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.hostile import NOBODY, needs_root, open_dir, running_as
from usagestatsd.facts.peers import (
    pids_holding,
    tcp_peer,
    tcp_socket_owner,
    unix_peer,
    unix_peer_path,
)
from usagestatsd.facts.procfs import cmdline


def unix_server(path: Path) -> Callable[[Callable[[str], None]], None]:
    """A child's body: listen on a Unix socket at `path`, accept forever."""

    def serve(ready: Callable[[str], None]) -> None:
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        s.listen(8)
        ready("listening")
        held = []
        while True:
            held.append(s.accept()[0])

    return serve


def tcp_server(host: str) -> Callable[[Callable[[str], None]], None]:
    """A child's body: listen on `host` port 0 (dual-stack for '::'), report the port."""

    def serve(ready: Callable[[str], None]) -> None:
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        if host == "::":
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind((host, 0))
        s.listen(8)
        ready(str(s.getsockname()[1]))
        held = []
        while True:
            conn = s.accept()[0]
            conn.send(b"!")  # says "accepted": until then the kernel shows no inode for it
            held.append(conn)

    return serve


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every uid may create sockets in (as Ray's sockets/ is)."""
    path = open_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@needs_root
def test_unix_peer_is_the_uid_that_listens(shared_dir: Path) -> None:
    """A socket bound by nobody reports nobody's uid and pid, whatever the file's owner."""
    path = shared_dir / "dash_ReportHead"
    with running_as(unix_server(path)) as (pid, _):
        os.chown(path, 0, 0)  # the file's owner says nothing about who serves it
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            peer = unix_peer(s)
    assert peer.uid == NOBODY
    assert peer.pid == pid


@needs_root
def test_unix_peer_path_reveals_a_symlink_swap(shared_dir: Path) -> None:
    """Reached through a symlink, the peer's path is where it really bound, not the link."""
    real = shared_dir / "private.sock"
    link = shared_dir / "dash_ReportHead"
    with running_as(unix_server(real), uid=0):
        link.symlink_to(real)
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(link))
            assert unix_peer_path(s) == str(real)


@needs_root
@pytest.mark.parametrize(
    "listen,connect", [("127.0.0.1", "127.0.0.1"), ("::1", "::1"), ("::", "127.0.0.1")]
)
def test_tcp_peer_names_the_listening_uid_and_its_process(listen: str, connect: str) -> None:
    """A loopback server run by nobody: its uid, and its socket held by its own pid."""
    with running_as(tcp_server(listen)) as (pid, port):
        family = socket.AF_INET6 if ":" in connect else socket.AF_INET
        with socket.socket(family) as s:
            s.connect((connect, int(port)))
            assert s.recv(1) == b"!"
            peer = tcp_peer(s)
        assert peer is not None
        assert peer.uid == NOBODY
        assert peer.inode is not None
        assert pids_holding(peer.inode) == [pid]
        assert cmdline(pid) == cmdline(os.getpid())  # a fork: the same command line


@needs_root
def test_the_client_of_an_accepted_connection_is_known() -> None:
    """The intake's view: a client connecting as nobody is seen as nobody, root as root."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        port = server.getsockname()[1]

        def connect(ready: Callable[[str], None]) -> None:
            # As nobody, nothing more may be imported (the venv is under root's 0700 home):
            # a plain connect needs no codec, create_connection would load 'idna'.
            held = socket.socket()
            held.connect(("127.0.0.1", port))
            ready("connected")
            held.recv(1)

        with running_as(connect):
            conn, _ = server.accept()
            with conn:
                peer = tcp_socket_owner(conn.getpeername(), conn.getsockname())
            assert peer is not None and peer.uid == NOBODY
        with socket.create_connection(("127.0.0.1", port)):
            conn, _ = server.accept()
            with conn:
                peer = tcp_socket_owner(conn.getpeername(), conn.getsockname())
            assert peer is not None and peer.uid == os.geteuid()


def test_tables_are_read_defensively(tmp_path: Path) -> None:
    """A row that matches is found; garbage rows, other pairs and a missing /proc name nobody."""
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "tcp").write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
        "   uid  timeout inode\n"
        "   0: garbage\n"
        "   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000"
        "  1000        0 4242 1\n"
    )
    peer = tcp_socket_owner(("127.0.0.1", 8080), ("127.0.0.1", 54321), tmp_path)
    assert peer is not None and (peer.uid, peer.inode) == (1000, 4242)
    assert tcp_socket_owner(("127.0.0.1", 8081), ("127.0.0.1", 54321), tmp_path) is None
    assert tcp_socket_owner(("127.0.0.1", 8080), ("127.0.0.1", 1), tmp_path / "absent") is None
    assert cmdline(0, tmp_path) == []


def test_a_connection_not_yet_accepted_is_answered_by_its_listener(tmp_path: Path) -> None:
    """Before accept() the server's end has inode 0 and uid 0: its one listener answers."""
    (tmp_path / "net").mkdir()
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
    (tmp_path / "net" / "tcp").write_text(
        header + "   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000"
        "  65534        0 777 1\n"
        "   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000"
        "     0        0 0 1\n"
    )
    peer = tcp_socket_owner(("127.0.0.1", 8080), ("127.0.0.1", 54321), tmp_path)
    assert peer is not None and (peer.uid, peer.inode) == (65534, 777)
    # Two listeners on the port (SO_REUSEPORT): which one would accept is unknown.
    with (tmp_path / "net" / "tcp").open("a") as table:
        table.write(
            "   2: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000"
            "      0        0 778 1\n"
        )
    assert tcp_socket_owner(("127.0.0.1", 8080), ("127.0.0.1", 54321), tmp_path) is None
