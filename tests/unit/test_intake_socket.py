"""Who holds the intake's client and its port, as the kernel says; systemd's socket; retries."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.hostile import NOBODY, needs_root, running_as
from tests.support.poll import until
from usagestatsd.facts import peers, sockdiag
from usagestatsd.facts.peers import tcp_client_owner, tcp_listener_owner
from usagestatsd.service.intake import RayIntake
from usagestatsd.service.intake_socket import inherited_sockets, take_inherited


def listen(host: str, port: int = 0) -> Callable[[Callable[[str], None]], None]:
    """A child's body: listen at (host, port), say the port, wait."""

    def serve(ready: Callable[[str], None]) -> None:
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        s.bind((host, port))
        s.listen(8)
        ready(str(s.getsockname()[1]))
        while True:
            s.accept()

    return serve


def connect_from(server: tuple[str, int]) -> Callable[[Callable[[str], None]], None]:
    """A child's body: connect to `server` and hold the connection."""

    def serve(ready: Callable[[str], None]) -> None:
        s = socket.socket(socket.AF_INET6 if ":" in server[0] else socket.AF_INET)
        s.connect(server)
        ready("connected")
        s.recv(1)

    return serve


@needs_root
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_the_client_is_its_own_socket_s_owner(host: str) -> None:
    """nobody's client is nobody's, root's is root's, in either family."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.create_server((host, 0), family=family) as server:
        with running_as(connect_from((host, server.getsockname()[1]))):
            conn, _ = server.accept()
            with conn:
                peer = tcp_client_owner(conn.getpeername(), conn.getsockname())
        assert peer is not None and peer.uid == NOBODY and peer.inode
        with socket.create_connection((host, server.getsockname()[1])):
            conn, _ = server.accept()
            with conn:
                peer = tcp_client_owner(conn.getpeername(), conn.getsockname())
        assert peer is not None and peer.uid == 0 and peer.inode


def test_v4_mapped_ends_are_one_socket() -> None:
    """An IPv4 client of a dual-stack server, an IPv6 socket connected to a v4-mapped address."""
    with socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True) as dual:
        with socket.create_connection(("127.0.0.1", dual.getsockname()[1])):
            conn, _ = dual.accept()
            with conn:
                assert conn.getpeername()[0] == "::ffff:127.0.0.1"
                peer = tcp_client_owner(conn.getpeername(), conn.getsockname())
        assert peer is not None and peer.uid == os.geteuid() and peer.inode
    with socket.create_server(("127.0.0.1", 0)) as v4, socket.socket(socket.AF_INET6) as client:
        client.connect(("::ffff:127.0.0.1", v4.getsockname()[1]))
        conn, _ = v4.accept()
        with conn:
            peer = tcp_client_owner(conn.getpeername(), conn.getsockname())
        assert peer is not None and peer.uid == os.geteuid() and peer.inode


@needs_root
def test_a_closed_client_is_nobody_s_even_beside_a_root_listener() -> None:
    """The client closed: its lingering end has no inode; a root listener of the other
    family at the client's port is never taken for it."""
    with socket.socket(socket.AF_INET6) as root_side:
        root_side.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        root_side.bind(("::", 0))
        root_side.listen(1)
        port = root_side.getsockname()[1]
        with socket.create_server(("127.0.0.1", 0)) as server:
            client = socket.socket()
            client.bind(("127.0.0.1", port))
            client.connect(server.getsockname())
            client.sendall(b"POST")
            client.close()
            conn, _ = server.accept()
            with conn:
                peer = tcp_client_owner(conn.getpeername(), conn.getsockname())
    assert peer is None or not peer.inode


def test_no_socket_no_owner() -> None:
    """Addresses no socket has: None, not the listener at that port."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert tcp_client_owner(("127.0.0.1", port), ("127.0.0.1", 1)) is None
        assert sockdiag.lookup(*[sockdiag.endpoint(a) for a in [("127.0.0.1", port)] * 2]) is None


def test_the_proc_fallback_matches_exactly(tmp_path: Path) -> None:
    """Without netlink, the row with exactly these addresses; a listener at the port is not it."""
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "tcp").write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
        "   uid  timeout inode\n"
        "   0: 00000000:D431 00000000:0000 0A 00000000:00000000 00:00000000 00000000"
        "     0        0 77 1\n"
        "   1: 0100007F:D431 0100007F:1F90 01 00000000:00000000 00:00000000 00000000"
        "  1000        0 4242 1\n"
    )
    client, server = sockdiag.endpoint(("127.0.0.1", 54321)), sockdiag.endpoint(("127.0.0.1", 8080))
    peer = peers._table_row(client, server, tmp_path)
    assert peer is not None and (peer.uid, peer.inode) == (1000, 4242)
    other = sockdiag.endpoint(("127.0.0.1", 8081))
    assert peers._table_row(client, other, tmp_path) is None


@needs_root
def test_the_holder_of_a_port_is_named() -> None:
    """nobody's listener: uid 65534, whichever family asks for it."""
    with running_as(listen("127.0.0.1")) as (_, port):
        holder = tcp_listener_owner(("127.0.0.1", int(port)))
    assert holder is not None and holder.uid == NOBODY
    assert tcp_listener_owner(("127.0.0.1", int(port))) is None


def test_systemd_sockets_are_taken_only_for_this_process() -> None:
    """LISTEN_PID of another process: nothing is taken; the variables are gone either way."""
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "intake"}
    assert inherited_sockets(env) == {}
    assert env == {}


def test_the_passed_socket_at_the_intake_address_is_used() -> None:
    """The one listening at ray_intake is taken; one elsewhere is closed."""
    right = socket.create_server(("127.0.0.1", 0))
    wrong = socket.create_server(("127.0.0.1", 0))
    port = right.getsockname()[1]
    chosen = take_inherited([wrong, right], "127.0.0.1", port)
    assert chosen is right
    assert wrong.fileno() == -1
    right.close()


@needs_root
async def test_a_taken_port_is_retried_until_free() -> None:
    """nobody holds the port: not listening, nobody named; once free, the intake listens."""
    changes: list[bool] = []

    def changed(intake: RayIntake) -> None:
        changes.append(intake.listening)

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    intake = RayIntake(
        "127.0.0.1", port, lambda s: None, lambda: {0}, on_change=changed, bind_retry_s=0.1
    )
    try:
        with running_as(listen("127.0.0.1", port)):
            assert not await intake.start()
            assert (intake.taken, intake.holder_uid) == (True, NOBODY)
            assert intake.problem == f"address in use by uid {NOBODY}"
            await asyncio.sleep(0.3)
            assert not intake.listening
        await until(lambda: intake.listening)
        assert changes == [True]
        assert not intake.taken and intake.problem is None
    finally:
        await intake.stop()
