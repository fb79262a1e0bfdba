"""Ray's dashboard over HTTP on TCP, for Ray versions without `dash_*` Unix sockets.

Ray before 2.47 serves its dashboard API only on a TCP port (default 127.0.0.1:8265).
Any local user can listen on a loopback port first, and several clusters can run on one
host, so the port is never trusted by its number: each connection is checked, before a
byte is sent on it, to be served by the discovered session's own dashboard:

1. the listening socket at the other end belongs to the uid that owns the session
   directory (`/proc/net/tcp{,6}`, via `peers.tcp_peer`);
2. a process holding that socket is a Ray dashboard (`.../ray/dashboard/dashboard.py`)
   whose command line names this session's directory (`--session-dir=<session>`), and
   runs as that same uid.

Where to connect is found without configuration from the same command line (`--host`,
`--port`); a configured `dashboard_address` replaces it; without either, Ray's default
127.0.0.1:8265 is tried (and still checked). See docs/design.md.

The check runs in the connector (`connectors.CheckedTCPConnector`, the twin of the Unix
sockets' `CheckedUnixConnector`) on the connection's own socket; the reply is then read
by the same code as the Unix sockets' (`fetch._get`: timeout, size and decode caps).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from usagestatsd.base.hostport import host_port
from usagestatsd.contract.report import ClusterMetadata, Origins, ProviderFacts, ResourceTotals
from usagestatsd.facts.connectors import PeerCheck
from usagestatsd.facts.peers import pids_holding, tcp_peer
from usagestatsd.facts.procfs import PROC, cmdline, option, owner, pids
from usagestatsd.facts.session import Session
from usagestatsd.facts.sources import Failure, SourceError

DEFAULT_ADDRESS = ("127.0.0.1", 8265)
SOCKETS = "sockets"
DASHBOARD_HTTP = "dashboard HTTP"
PROVIDER = "provider"
_DASHBOARD_SCRIPT = "dashboard/dashboard.py"
_VERSION_RE = re.compile(rb"""^version\s*=\s*["']([0-9A-Za-z.+\-]{1,40})["']""", re.MULTILINE)


@dataclass(frozen=True)
class DashboardProcess:
    """A running Ray dashboard of one session, as its command line says."""

    pid: int
    host: str | None
    port: int | None
    script: str


def _script(args: list[str]) -> str | None:
    return next((a for a in args[:3] if a.endswith(_DASHBOARD_SCRIPT)), None)


def _same_dir(named: str | None, session: Session) -> bool:
    if not named:
        return False
    try:
        return os.path.realpath(named) == os.path.realpath(session.path)
    except (OSError, ValueError):
        return False


def as_dashboard_of(pid: int, session: Session, proc: Path = PROC) -> DashboardProcess | None:
    """`pid` as the session's dashboard: run by the session's owner, naming its directory."""
    args = cmdline(pid, proc)
    script = _script(args)
    if script is None or not _same_dir(option(args, "--session-dir"), session):
        return None
    if owner(pid, proc) != session.owner_uid:
        return None
    port_text = option(args, "--port")
    port = int(port_text) if port_text and port_text.isdigit() else None
    return DashboardProcess(pid, option(args, "--host"), port, script)


def find_dashboard(session: Session, proc: Path = PROC) -> DashboardProcess | None:
    """The session's dashboard process, found by its command line (None if not seen)."""
    for pid in pids(proc):
        found = as_dashboard_of(pid, session, proc)
        if found is not None:
            return found
    return None


def session_running(session: Session, proc: Path = PROC) -> bool:
    """Whether any process of the session's owner names the session directory (Ray's do)."""
    # Ray spells the directory as it was given (session.alias when the temp root's path
    # holds a symlink), so both spellings count.
    markers = [str(session.path)] + ([str(session.alias)] if session.alias else [])
    for pid in pids(proc):
        if owner(pid, proc) != session.owner_uid:
            continue
        if any(m in arg for arg in cmdline(pid, proc) for m in markers):
            return True
    return False


def ray_version_of(dashboard: DashboardProcess) -> str | None:
    """The Ray version installed where the dashboard runs from (ray/_version.py), unimported."""
    version_file = Path(dashboard.script).parent.parent / "_version.py"
    try:
        with open(version_file, "rb") as f:
            match = _VERSION_RE.search(f.read(4096))
    except OSError:
        return None
    return match.group(1).decode() if match else None


def connect_host(host: str | None) -> str:
    """Where to connect for a dashboard bound to `host`: wildcards and names mean loopback."""
    if not host or host == "localhost":
        return "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return "127.0.0.1"  # a host name: not resolved (no DNS); Ray binds it locally
    if ip.is_unspecified:
        return "::1" if ip.version == 6 else "127.0.0.1"
    return str(ip)


def address_for(session: Session, configured: tuple[str, int] | None) -> tuple[str, int, str]:
    """(host, port, how it was found): configured, else Ray's command line, else default."""
    if configured is not None:
        return connect_host(configured[0]), configured[1], "configured dashboard_address"
    found = find_dashboard(session)
    if found is not None and found.port is not None:
        return connect_host(found.host), found.port, "the dashboard's command line"
    return DEFAULT_ADDRESS[0], DEFAULT_ADDRESS[1], "Ray's default"


@dataclass(frozen=True)
class DashboardRoute:
    """How this cycle reaches the dashboard: one way per socket, and what it says of it."""

    fetch: Callable[[str, str], Awaitable[Any]]  # (socket name, URL path) -> decoded JSON
    route: str  # for Origins.dashboard: SOCKETS, or DASHBOARD_HTTP with its address
    ways: dict[str, str]  # socket name -> SOCKETS or DASHBOARD_HTTP
    tampering: str | None = None  # a socket missing from sockets/, and what was used instead


class HolderUnseen(PermissionError):
    """A listener whose process this user cannot see: it may well be Ray's (not refused as
    another program's, and not a sign that the cluster is stopped)."""


def verify_listener(sock: socket.socket, session: Session, proc: Path = PROC) -> None:
    """Raise unless the other end of `sock` is this session's dashboard (see the module doc)."""
    where = host_port(*sock.getpeername()[:2])
    peer = tcp_peer(sock, proc)
    if peer is None or peer.inode is None:
        raise PermissionError(f"{where} is not a listening socket of this host")
    if peer.uid != session.owner_uid:
        raise PermissionError(
            f"{where} is held by uid {peer.uid}, not by the session's owner "
            f"(uid {session.owner_uid}): not this cluster's dashboard"
        )
    holders = pids_holding(peer.inode, proc)
    if not holders:
        raise HolderUnseen(
            f"cannot see which process holds {where}: run usagestatsd as the user that "
            "started Ray, or as root"
        )
    if not any(as_dashboard_of(pid, session, proc) for pid in holders):
        raise PermissionError(
            f"{where} is not served by the dashboard of {session.name} "
            "(another cluster's dashboard, or another program)"
        )


def listener_check(session: Session, source: str) -> PeerCheck:
    """The connector's check for `session`'s dashboard; a refusal is a SourceError."""

    def check(sock: socket.socket | None) -> None:
        if sock is None:
            raise SourceError(source, "refused: no socket to check the peer of")
        try:
            verify_listener(sock, session)
        except HolderUnseen as exc:
            raise SourceError(source, f"refused: {exc}", Failure.HOLDER_UNSEEN) from None
        except PermissionError as exc:
            raise SourceError(source, f"refused: {exc}") from None

    return check


def origins_of(
    session: Session,
    way: DashboardRoute,
    metadata: ClusterMetadata | None,
    totals: ResourceTotals,
    jobs: int | None,
    provider: ProviderFacts | None,
) -> Origins:
    """Where this cycle's facts came from, group by group, and the cluster's Ray version."""
    version = metadata.ray_version if metadata else None
    if version is None:
        found = find_dashboard(session)
        version = ray_version_of(found) if found else None

    reports, jobs_way = way.ways["dash_ReportHead"], way.ways["dash_JobHead"]

    def exact_or(exact: int | None, fallback: int | None, where: str) -> str | None:
        if exact is not None:
            return PROVIDER
        return where if fallback is not None else None

    return Origins(
        session_key=session.key,
        ray_version=version,
        dashboard=way.route,
        metadata=reports if metadata else None,
        resources=reports if totals.total_num_cpus is not None else None,
        nodes=exact_or(
            provider.total_num_nodes if provider else None, totals.total_num_nodes, reports
        ),
        running_jobs=exact_or(
            provider.total_num_running_jobs if provider else None, jobs, jobs_way
        ),
        gcs=PROVIDER if provider is not None else None,
        tampering=way.tampering,
    )
