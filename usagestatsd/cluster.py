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
checked is `fetch.py`.
"""

from __future__ import annotations

import asyncio
import os
import pwd
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from usagestatsd import dashboard
from usagestatsd.clusterconfig import load_cluster_config
from usagestatsd.fetch import Limits, capped, fetch_tcp_json, fetch_unix_json
from usagestatsd.report import (
    ClusterConfigFacts,
    ClusterMetadata,
    Origins,
    ProviderFacts,
    ResourceTotals,
)
from usagestatsd.session import Session
from usagestatsd.sources import (
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
        path = url_path.split("?")[0]
        source = f"{socket_name} {path}"
        return await fetch_unix_json(
            session.sockets_dir / socket_name,
            url_path,
            source,
            capped(limits, path),
            session.socket_aliases(socket_name),
        )

    return fetch


def _tcp(session: Session, limits: Limits, address: tuple[str, int], how: str) -> Fetch:
    async def fetch(_socket_name: str, url_path: str) -> Any:
        host, port = address
        path = url_path.split("?")[0]
        source = f"dashboard {host}:{port} ({how}) {path}"

        check = dashboard.listener_check(session, source)
        return await fetch_tcp_json(address, url_path, source, capped(limits, path), check)

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
    fetch, route = dashboard_route(session, limits, dashboard_address)
    metadata, totals, jobs, provider = await asyncio.gather(
        _ask(fetch, "dash_ReportHead", METADATA_PATH, parse_cluster_metadata, problems),
        _ask(fetch, "dash_ReportHead", "/api/cluster_status", parse_cluster_status, problems),
        _ask(fetch, "dash_JobHead", "/api/jobs/", parse_job_list, problems),
        _ask(_unix(session, limits), PROVIDER_SOCKET, "/v1/usage", parse_provider, problems)
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
    origins = dashboard.origins_of(session, route, metadata, totals, jobs, provider)
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
    return [p for p in problems if not p.source.endswith(METADATA_PATH)]
