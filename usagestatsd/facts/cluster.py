"""Gather the cluster's facts over local Unix sockets and the cluster config file.

The dashboard's `dash_*` Unix sockets are the first choice; a Ray version without them
(before 2.47) is asked over its dashboard's TCP port instead, checked to be the session's
own dashboard (`dashboard.py`).

Read-only towards the cluster: only endpoints that record nothing in Ray are used (Ray's
state API records a usage tag per call, so it is avoided).

Each source is asked independently, with a timeout and a response-size cap; a source
that is absent, refuses, hangs, answers garbage or is served by a process that is not
Ray's (a uid outside `Limits.trusted_uids`, or a socket bound in another directory than
the one asked for: docs/security.md) yields None for its fields and one `SourceError` in
`ClusterFacts.problems`. Only compact endpoints are used, so the cost of a cycle does not
grow with per-node detail the report does not need. How one request is bounded and
checked is `facts/fetch.py`.
"""

from __future__ import annotations

import asyncio
import os
import pwd
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

import structlog

from usagestatsd.base.hostport import host_port
from usagestatsd.contract.report import (
    ClusterConfigFacts,
    ClusterMetadata,
    Origins,
    ProviderFacts,
    ResourceTotals,
)
from usagestatsd.facts import dashboard
from usagestatsd.facts.clusterconfig import load_cluster_config
from usagestatsd.facts.fetch import (
    MAX_ENTRIES,
    Limits,
    capped,
    fetch_tcp_json,
    fetch_unix_json,
    find_renamed,
)
from usagestatsd.facts.session import Session
from usagestatsd.facts.sources import (
    Asked,
    SourceError,
    parse_cluster_metadata,
    parse_cluster_status,
    parse_job_list,
    parse_provider,
)

CLUSTER_CONFIG_NAME = "ray_bootstrap_config.yaml"
PROVIDER_SOCKET = "usagestatsd_provider"
METADATA_PATH = "/api/v0/cluster_metadata"
SOCKETS = dashboard.SOCKETS
DASHBOARD_HTTP = dashboard.DASHBOARD_HTTP
DashboardRoute = dashboard.DashboardRoute
REPORT_HEAD, JOB_HEAD = "dash_ReportHead", "dash_JobHead"
DASHBOARD_SOCKETS = (REPORT_HEAD, JOB_HEAD)

T = TypeVar("T")
log = structlog.get_logger()


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


Fetch = Callable[[str, str], Awaitable[Any]]


async def _ask(
    fetch: Fetch,
    socket_name: str,
    url_path: str,
    parse: Callable[[Any], T],
    asked: Asked,
    problems: list[SourceError],
) -> T | None:
    try:
        return parse(await fetch(socket_name, url_path))
    except SourceError as exc:
        exc.asked = asked
        problems.append(exc)
        return None


def _unix(session: Session, limits: Limits, renamed: dict[str, Path] | None = None) -> Fetch:
    """Ask Ray's sockets in `sockets/`; `renamed`: where one missing from there was found."""

    async def fetch(socket_name: str, url_path: str) -> Any:
        path = url_path.split("?")[0]
        source = f"{socket_name} {path}"
        found = (renamed or {}).get(socket_name)
        return await fetch_unix_json(
            found or session.sockets_dir / socket_name,
            url_path,
            source,
            capped(limits, path),
            session.socket_aliases(socket_name),
            # A socket under another name is Ray's only if the kernel says it bound this one.
            _bound_as(session, socket_name) if found else (),
        )

    return fetch


def _bound_as(session: Session, socket_name: str) -> tuple[str, ...]:
    """The paths Ray binds its socket `socket_name` at (as resolved, and as configured)."""
    return (str(session.sockets_dir / socket_name), *session.socket_aliases(socket_name))


def _tcp(session: Session, limits: Limits, address: tuple[str, int], how: str) -> Fetch:
    async def fetch(_socket_name: str, url_path: str) -> Any:
        host, port = address
        path = url_path.split("?")[0]
        source = f"dashboard {host_port(host, port)} ({how}) {path}"

        check = dashboard.listener_check(session, source)
        return await fetch_tcp_json(address, url_path, source, capped(limits, path), check)

    return fetch


def dashboard_route(
    session: Session, limits: Limits, configured: tuple[str, int] | None
) -> DashboardRoute:
    """How to reach the dashboard: its Unix sockets where Ray has them, else HTTP on TCP.

    A socket missing from `sockets/` while Ray's dashboard runs was renamed or removed by
    someone: any local user can, in Ray's 0777 directory. Then a route the kernel vouches
    for is used: the same socket under its new name (its listener's uid and the path it
    bound are checked), else, while the session's dashboard process runs, its HTTP port
    (checked to be the session's own on each connection).
    """
    sockets = session.sockets_dir
    missing = [n for n in DASHBOARD_SOCKETS if not os.path.lexists(sockets / n)]
    renamed = _renamed(session, limits, missing)
    unix = _unix(session, limits, renamed)
    if len(missing) == len(DASHBOARD_SOCKETS) and not renamed:
        # Ray before 2.47 has no dash_* sockets: its dashboard is on TCP. A later Ray's
        # other dash_* sockets beside a running dashboard say these two were taken away.
        host, port, how = dashboard.address_for(session, configured)
        tcp = _tcp(session, limits, (host, port), how)
        ways = dict.fromkeys(DASHBOARD_SOCKETS, DASHBOARD_HTTP)
        http = f"{DASHBOARD_HTTP} {host_port(host, port)} ({how})"
        taken = _other_dashboard_sockets(sockets) and dashboard.find_dashboard(session)
        return DashboardRoute(
            tcp, http, ways, _tampering({}, dict.fromkeys(missing), http) if taken else None
        )
    over_tcp = [n for n in missing if n not in renamed]
    if not over_tcp or dashboard.find_dashboard(session) is None:
        # No dashboard process of this session runs (a stopped head leaves some sockets
        # behind): nothing to reach over TCP, and nothing to call tampering.
        ways = dict.fromkeys(DASHBOARD_SOCKETS, SOCKETS)
        return DashboardRoute(unix, SOCKETS, ways, _tampering(renamed, {}, ""))
    host, port, how = dashboard.address_for(session, configured)
    tcp = _tcp(session, limits, (host, port), how)
    http = f"{DASHBOARD_HTTP} {host_port(host, port)} ({how})"

    async def fetch(socket_name: str, url_path: str) -> Any:
        chosen = tcp if socket_name in over_tcp else unix
        return await chosen(socket_name, url_path)

    ways = {n: DASHBOARD_HTTP if n in over_tcp else SOCKETS for n in DASHBOARD_SOCKETS}
    route = f"{SOCKETS}, and {http} for {', '.join(over_tcp)}"
    return DashboardRoute(fetch, route, ways, _tampering(renamed, dict.fromkeys(over_tcp), http))


def _renamed(session: Session, limits: Limits, missing: list[str]) -> dict[str, Path]:
    """Where each missing socket is now in `sockets/`, for those found there."""
    skip = {*DASHBOARD_SOCKETS, PROVIDER_SOCKET}
    renamed: dict[str, Path] = {}
    for name in missing:
        bound_as = _bound_as(session, name)
        found = find_renamed(session.sockets_dir, bound_as, limits.trusted_uids, skip)
        if found is not None:
            renamed[name] = found
    return renamed


def _other_dashboard_sockets(sockets: Path) -> bool:
    """Whether `sockets/` holds dash_* sockets (Ray 2.47 and later make them all at once)."""
    try:
        with os.scandir(sockets) as listing:
            return any(e.name.startswith("dash_") for e in islice(listing, MAX_ENTRIES))
    except OSError:
        return False


def _tampering(renamed: dict[str, Path], over_tcp: dict[str, None], http: str) -> str | None:
    """What was missing from sockets/ and what was used instead, in words (None: nothing).

    The new name is not said: whoever renamed the socket chose it."""
    said = [
        f"{name} is missing from sockets/; used the socket Ray bound as {name}, found under "
        "another name there"
        for name in renamed
    ]
    said += [f"{name} is missing from sockets/; used {http}" for name in over_tcp]
    return "; ".join(said) or None


def name_tampering(before: Origins | None, now: Origins | None) -> None:
    """One journal warning when a dashboard socket goes missing, not one per cycle: again
    only for another session or when what is missing (or used instead) changes."""
    if now is None or now.tampering is None:
        return
    if before is not None and (before.session_key, before.tampering) == (
        now.session_key,
        now.tampering,
    ):
        return
    log.warning("cluster.socket_tampered", session=now.session_key, problem=now.tampering)


def cluster_config_path(session: Session, configured: Path | None) -> Path | None:
    """The configured path, or ~/ray_bootstrap_config.yaml of the user who owns the session."""
    if configured is not None:
        return configured
    try:
        return Path(pwd.getpwuid(session.owner_uid).pw_dir) / CLUSTER_CONFIG_NAME
    except KeyError:
        return None


async def read_cluster_config(
    path: Path | None, kuberay: bool, kubernetes: bool, problems: list[SourceError]
) -> ClusterConfigFacts:
    """Cloud provider, worker bounds and instance types; 'unknown' provider without a file."""
    facts = ClusterConfigFacts(cloud_provider="unknown")
    if path is not None:
        try:
            facts = await load_cluster_config(path)
        except FileNotFoundError:
            pass
        except SourceError as exc:
            problems.append(exc)
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
    way = dashboard_route(session, limits, dashboard_address)
    fetch = way.fetch
    ask = partial(_ask, problems=problems)
    metadata, totals, jobs, provider = await asyncio.gather(
        ask(fetch, REPORT_HEAD, METADATA_PATH, parse_cluster_metadata, Asked.DASHBOARD_METADATA),
        ask(fetch, REPORT_HEAD, "/api/cluster_status", parse_cluster_status, Asked.DASHBOARD),
        ask(fetch, JOB_HEAD, "/api/jobs/", parse_job_list, Asked.DASHBOARD),
        ask(_unix(session, limits), PROVIDER_SOCKET, "/v1/usage", parse_provider, Asked.PROVIDER)
        if provider_present
        else _none(),
    )
    from_gcs = metadata is None and provider is not None and provider.cluster_metadata is not None
    if from_gcs:
        metadata = provider.cluster_metadata if provider else None
        problems[:] = metadata_served_elsewhere(problems)
    config = await read_cluster_config(
        cluster_config_path(session, config_path), kuberay, kubernetes, problems
    )
    totals = totals or ResourceTotals()
    running = None
    if metadata is None and totals.total_num_nodes is None and jobs is None:
        running = dashboard.session_running(session)
    origins = dashboard.origins_of(session, way, metadata, totals, jobs, provider)
    if from_gcs:
        origins = replace(origins, metadata=dashboard.PROVIDER)
    return ClusterFacts(
        metadata=metadata,
        totals=totals,
        running_jobs=jobs,
        config=config,
        provider=provider,
        problems=tuple(problems),
        provider_present=provider_present,
        origins=origins,
        session_running=running,
    )


async def _none() -> None:
    return None


def metadata_served_elsewhere(problems: list[SourceError]) -> list[SourceError]:
    """The problems without the metadata's: a dashboard older than Ray 2.3 has no such path,
    and the provider gave the metadata from the GCS, so that 404 is no fault."""
    return [p for p in problems if p.asked is not Asked.DASHBOARD_METADATA]
