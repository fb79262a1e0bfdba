"""Gather the cluster's facts over local Unix sockets and the cluster config file.

The dashboard's `dash_*` Unix sockets are the first choice; a Ray version without them
(before 2.47) is asked over its dashboard's TCP port instead, checked to be the session's
own dashboard (`dashboard.py`).

Read-only towards the cluster: only endpoints that record nothing in Ray are used (Ray's
state API records a usage tag per call, so it is avoided).

Each source is asked independently, with a timeout and a response-size cap; a source
that is absent, refuses, hangs, answers garbage or is served by a process that is not
Ray's (a uid outside `Limits.trusted_uids`, or a socket bound elsewhere than the path
asked for: docs/security.md) yields None for its fields and one `SourceError` in
`ClusterFacts.problems`. Only compact endpoints are used, so the cost of
a cycle does not grow with per-node detail the report does not need.
"""

from __future__ import annotations

import asyncio
import errno
import os
import pwd
import socket
import stat
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp.client_reqrep import ClientRequest
from aiohttp.tracing import Trace

from usagestatsd import dashboard
from usagestatsd.fileio import read_regular_file
from usagestatsd.peers import unix_peer, unix_peer_path
from usagestatsd.report import (
    ClusterConfigFacts,
    ClusterMetadata,
    Origins,
    ProviderFacts,
    ResourceTotals,
)
from usagestatsd.session import Session, trusted_uids
from usagestatsd.sources import (
    SourceError,
    decode_json,
    parse_cluster_config,
    parse_cluster_metadata,
    parse_cluster_status,
    parse_job_list,
    parse_provider,
)

CLUSTER_CONFIG_NAME = "ray_bootstrap_config.yaml"
MAX_CONFIG_BYTES = 1 << 20
PROVIDER_SOCKET = "usagestatsd_provider"
METADATA_PATH = "/api/v0/cluster_metadata"
SOCKETS = "sockets"
DASHBOARD_HTTP = "dashboard HTTP"
PROVIDER = "provider"

T = TypeVar("T")


@dataclass(frozen=True)
class ClusterFacts:
    """Everything gathered in one cycle; None where a source gave nothing."""

    metadata: ClusterMetadata | None
    totals: ResourceTotals
    running_jobs: int | None
    config: ClusterConfigFacts
    provider: ProviderFacts | None
    problems: tuple[SourceError, ...]
    provider_present: bool
    origins: Origins | None = None
    # Whether a process of this session runs (asked only when no dashboard answered).
    session_running: bool | None = None


@dataclass(frozen=True)
class Limits:
    """Per-request bounds for local sources, and the uids allowed to serve them."""

    timeout_s: float = 5.0
    max_bytes: int = 32 << 20
    trusted_uids: frozenset[int] = field(default_factory=trusted_uids)


PeerCheck = Callable[[socket.socket | None], None]


def unix_peer_check(
    socket_path: Path, source: str, trusted_uids: Collection[int], aliases: Collection[str] = ()
) -> PeerCheck:
    """The check run on a connected Unix socket before a byte is sent or trusted.

    The kernel's word only: `SO_PEERCRED` names the uid that listens (rows 1 and 2: any
    local user can bind a name in Ray's 0777 `sockets/`), and the peer's bound path must be
    the one asked for (row 12: a symlink swapped in before the connect leads elsewhere).
    `aliases` are other spellings of the same path (the temp root as configured, before
    symlinks in it were resolved), which is how Ray names its sockets.
    """
    expected = {str(socket_path), *aliases}

    def check(sock: socket.socket | None) -> None:
        if sock is None:
            raise SourceError(source, "refused: no socket to check the peer of")
        peer = unix_peer(sock)
        if peer.uid not in trusted_uids:
            raise SourceError(
                source,
                f"refused: served by uid {peer.uid}, not by Ray's user (trusted uids: "
                f"{', '.join(map(str, sorted(trusted_uids)))}; see ray_user in "
                "docs/configuration.md)",
            )
        bound = unix_peer_path(sock)
        if bound not in expected:
            raise SourceError(source, "refused: the socket answering is bound at another path")

    return check


class _CheckedUnixConnector(aiohttp.UnixConnector):
    """A Unix connector that vets each new connection's peer before the request is sent."""

    def __init__(self, path: str, check: PeerCheck) -> None:
        super().__init__(path=path)
        self._check = check

    async def connect(
        self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> aiohttp.connector.Connection:
        conn = await super().connect(req, traces, timeout)
        transport = conn.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        try:
            self._check(sock)
        except BaseException:
            conn.close()
            raise
        return conn


class _CheckedTCPConnector(aiohttp.TCPConnector):
    """The TCP twin of `_CheckedUnixConnector`: vets each connection before the request."""

    def __init__(self, check: PeerCheck) -> None:
        super().__init__(force_close=True)
        self._check = check

    async def connect(
        self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> aiohttp.connector.Connection:
        conn = await super().connect(req, traces, timeout)
        transport = conn.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        try:
            self._check(sock)
        except BaseException:
            conn.close()
            raise
        return conn


async def fetch_tcp_json(
    address: tuple[str, int], url_path: str, source: str, limits: Limits, check: PeerCheck
) -> Any:
    """GET `url_path` from the loopback HTTP server at `address` once `check` accepts its
    listener (for the dashboard: dashboard.verify_listener), strict JSON, same caps."""
    host, port = address
    base = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    try:
        return await asyncio.wait_for(
            _get(
                Path(base),  # names a socket file only in the EACCES hint, never for TCP
                url_path,
                source,
                limits,
                check,
                connector=_CheckedTCPConnector(check),
                base_url=base,
            ),
            limits.timeout_s,
        )
    except TimeoutError:
        raise SourceError(source, f"no complete answer within {limits.timeout_s:g}s") from None


async def fetch_unix_json(
    socket_path: Path, url_path: str, source: str, limits: Limits, aliases: Collection[str] = ()
) -> Any:
    """GET `url_path` over the Unix socket from a trusted peer, read at most `max_bytes`,
    decode strict JSON."""
    try:
        fd = pin_socket_file(socket_path)
    except FileNotFoundError:
        raise SourceError(source, f"socket {socket_path} is absent") from None
    except OSError as exc:
        raise SourceError(source, f"cannot look at {socket_path}: {exc.strerror}") from None
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise SourceError(source, f"{socket_path} is not a socket")
        check = unix_peer_check(socket_path, source, limits.trusted_uids, aliases)
        # Connecting through the pinned descriptor reaches exactly the socket file that was
        # checked: a name swapped meanwhile is not followed (row 12).
        return await asyncio.wait_for(
            _get(socket_path, url_path, source, limits, check, via=f"/proc/self/fd/{fd}"),
            limits.timeout_s,
        )
    except TimeoutError:
        raise SourceError(source, f"no complete answer within {limits.timeout_s:g}s") from None
    finally:
        os.close(fd)


def pin_socket_file(socket_path: Path) -> int:
    """An O_PATH descriptor on `socket_path`, reached without following any symlink.

    Every component is opened relative to the one before with O_NOFOLLOW, so a symlink
    anywhere on the way (Ray's directories are 0777: anyone can plant one) is refused with
    ELOOP or ENOTDIR instead of being followed. Callers pass resolved paths.
    """
    if not socket_path.is_absolute():
        raise OSError(errno.EINVAL, "not an absolute path")
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY)
    try:
        parts = socket_path.parts[1:]
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = os.O_PATH | os.O_NOFOLLOW | (0 if last else os.O_DIRECTORY)
            nxt = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = nxt
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            raise OSError(errno.ELOOP, "a symbolic link, not a socket")
        return fd
    except BaseException:
        os.close(fd)
        raise


async def _get(
    socket_path: Path,
    url_path: str,
    source: str,
    limits: Limits,
    check: PeerCheck,
    via: str | None = None,
    connector: aiohttp.BaseConnector | None = None,
    base_url: str = "http://localhost",
) -> Any:
    # The peer is checked right after the connect, before the request is sent: nothing
    # goes to, and nothing is read from, a process that is not Ray's (docs/security.md).
    connector = connector or _CheckedUnixConnector(via or str(socket_path), check)
    try:
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            http.get(f"{base_url}{url_path}", allow_redirects=False) as response,
        ):
            if response.status != 200:
                raise SourceError(source, f"HTTP status {response.status}")
            # Chunks joined once: a reply arriving in many small pieces then costs linear
            # time, where `body += chunk` would copy everything read so far at each piece.
            chunks: list[bytes] = []
            size = 0
            while size <= limits.max_bytes:
                chunk = await response.content.read(limits.max_bytes + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            if size > limits.max_bytes:
                raise SourceError(source, f"reply larger than {limits.max_bytes} bytes")
            body = b"".join(chunks)
    except aiohttp.ClientConnectionError as exc:
        os_error = getattr(exc, "os_error", None)
        reason = getattr(os_error, "strerror", None) or type(exc).__name__
        if getattr(os_error, "errno", None) == errno.EACCES:
            reason += (
                "; connecting needs write permission on Ray's socket: run usagestatsd as the "
                "user that started Ray (see docs/running-as-ray-user.md; "
                f"'stat -c %U {socket_path}' names that user)"
            )
        raise SourceError(source, f"connection failed ({reason})") from None
    except aiohttp.ClientError as exc:
        raise SourceError(source, f"bad HTTP reply ({type(exc).__name__})") from None
    return decode_json(source, body)


Fetch = Callable[[str, str], Awaitable[Any]]


async def _ask(
    fetch: Fetch,
    socket_name: str,
    url_path: str,
    parse: Callable[[Any], T],
    problems: list[SourceError],
) -> T | None:
    try:
        return parse(await fetch(socket_name, url_path))
    except SourceError as exc:
        problems.append(exc)
        return None


def _unix(session: Session, limits: Limits) -> Fetch:
    async def fetch(socket_name: str, url_path: str) -> Any:
        source = f"{socket_name} {url_path.split('?')[0]}"
        path = session.sockets_dir / socket_name
        return await fetch_unix_json(
            path, url_path, source, limits, session.socket_aliases(socket_name)
        )

    return fetch


def _tcp(session: Session, limits: Limits, address: tuple[str, int], how: str) -> Fetch:
    async def fetch(_socket_name: str, url_path: str) -> Any:
        host, port = address
        source = f"dashboard {host}:{port} ({how}) {url_path.split('?')[0]}"

        def check(sock: socket.socket | None) -> None:
            if sock is None:
                raise SourceError(source, "refused: no socket to check the peer of")
            try:
                dashboard.verify_listener(sock, session)
            except PermissionError as exc:
                raise SourceError(source, f"refused: {exc}") from None

        return await fetch_tcp_json(address, url_path, source, limits, check)

    return fetch


def dashboard_route(
    session: Session, limits: Limits, configured: tuple[str, int] | None
) -> tuple[Fetch, str]:
    """How to reach the dashboard: its Unix sockets where Ray has them, else HTTP on TCP."""
    if any(os.path.lexists(session.sockets_dir / n) for n in ("dash_ReportHead", "dash_JobHead")):
        return _unix(session, limits), SOCKETS
    host, port, how = dashboard.address_for(session, configured)
    return _tcp(session, limits, (host, port), how), f"{DASHBOARD_HTTP} {host}:{port} ({how})"


def cluster_config_path(session: Session, configured: Path | None) -> Path | None:
    """The configured path, or ~/ray_bootstrap_config.yaml of the user who owns the session."""
    if configured is not None:
        return configured
    try:
        return Path(pwd.getpwuid(session.owner_uid).pw_dir) / CLUSTER_CONFIG_NAME
    except KeyError:
        return None


def read_cluster_config(
    path: Path | None, kuberay: bool, kubernetes: bool, problems: list[SourceError]
) -> ClusterConfigFacts:
    """Cloud provider, worker bounds and instance types; 'unknown' provider without a file."""
    facts = ClusterConfigFacts(cloud_provider="unknown")
    if path is not None:
        try:
            raw = read_regular_file(path, MAX_CONFIG_BYTES)
            import yaml  # only when a config file exists: keeps the idle daemon small

            facts = parse_cluster_config(yaml.safe_load(raw))
        except FileNotFoundError:
            pass
        except SourceError as exc:
            problems.append(SourceError(f"cluster config file {path}", exc.problem))
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or f"not valid YAML ({type(exc).__name__})"
            problems.append(SourceError(f"cluster config file {path}", reason))
        except Exception as exc:  # yaml.YAMLError and friends: the file is garbage
            problems.append(
                SourceError(f"cluster config file {path}", f"unreadable ({type(exc).__name__})")
            )
    if kuberay:
        return ClusterConfigFacts(cloud_provider="kuberay")
    if kubernetes and facts.cloud_provider in (None, "unknown"):
        return ClusterConfigFacts(cloud_provider="kubernetes")
    if facts.cloud_provider is None:
        return ClusterConfigFacts(
            "unknown",
            facts.min_workers,
            facts.max_workers,
            facts.head_node_instance_type,
            facts.worker_node_instance_types,
        )
    return facts


async def gather(
    session: Session,
    limits: Limits,
    config_path: Path | None = None,
    kuberay: bool = False,
    kubernetes: bool = False,
    dashboard_address: tuple[str, int] | None = None,
) -> ClusterFacts:
    """Ask every source at once; never raises for a misbehaving source."""
    problems: list[SourceError] = []
    provider_socket = session.sockets_dir / PROVIDER_SOCKET
    provider_present = os.path.lexists(provider_socket)
    fetch, route = dashboard_route(session, limits, dashboard_address)
    metadata, totals, jobs, provider = await asyncio.gather(
        _ask(fetch, "dash_ReportHead", METADATA_PATH, parse_cluster_metadata, problems),
        _ask(fetch, "dash_ReportHead", "/api/cluster_status", parse_cluster_status, problems),
        _ask(fetch, "dash_JobHead", "/api/jobs/", parse_job_list, problems),
        _ask(_unix(session, limits), PROVIDER_SOCKET, "/v1/usage", parse_provider, problems)
        if provider_present
        else _none(),
    )
    config = read_cluster_config(
        cluster_config_path(session, config_path), kuberay, kubernetes, problems
    )
    totals = totals or ResourceTotals()
    running = None
    if metadata is None and totals.total_num_nodes is None and jobs is None:
        running = dashboard.session_running(session)
    return ClusterFacts(
        metadata=metadata,
        totals=totals,
        running_jobs=jobs,
        config=config,
        provider=provider,
        problems=tuple(problems),
        provider_present=provider_present,
        origins=_origins(session, route, metadata, totals, jobs, provider),
        session_running=running,
    )


def _origins(
    session: Session,
    route: str,
    metadata: ClusterMetadata | None,
    totals: ResourceTotals,
    jobs: int | None,
    provider: ProviderFacts | None,
) -> Origins:
    where = SOCKETS if route == SOCKETS else DASHBOARD_HTTP
    version = metadata.ray_version if metadata else None
    if version is None:
        found = dashboard.find_dashboard(session)
        version = dashboard.ray_version_of(found) if found else None

    def exact_or(exact: int | None, fallback: int | None) -> str | None:
        if exact is not None:
            return PROVIDER
        return where if fallback is not None else None

    return Origins(
        session_key=session.key,
        ray_version=version,
        dashboard=route,
        metadata=where if metadata else None,
        resources=where if totals.total_num_cpus is not None else None,
        nodes=exact_or(provider.total_num_nodes if provider else None, totals.total_num_nodes),
        running_jobs=exact_or(provider.total_num_running_jobs if provider else None, jobs),
        gcs=PROVIDER if provider is not None else None,
    )


async def _none() -> None:
    return None
