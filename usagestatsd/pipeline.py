"""Everything a cycle does before sending: gather, decide, build, guard, serialise.

Shared by the daemon and `usagestatsd preview`, so that preview shows exactly what the
next report would carry. Reads the cluster; writes nothing, sends nothing.
"""

from __future__ import annotations

import contextlib
import pwd
import socket
from dataclasses import dataclass

from usagestatsd.cluster import ClusterFacts, Limits, gather
from usagestatsd.privacy import KnownIdentifiers, Redaction, guard
from usagestatsd.report import Report, build_report, nulls_for, serialise
from usagestatsd.session import Session
from usagestatsd.settings import Settings
from usagestatsd.state import ID_FROM_CLUSTER, ID_RANDOM, SessionState, State

_HEX_ID = frozenset("0123456789abcdef")


def collect_known_identifiers() -> KnownIdentifiers:
    """This machine's host names and human users' names and homes, for the privacy guard."""
    hosts = {socket.gethostname()}
    with contextlib.suppress(OSError), open("/etc/hostname") as handle:
        hosts.add(handle.read().strip())
    users, homes = set(), set()
    for entry in pwd.getpwall():
        homes.add(entry.pw_dir)
        if entry.pw_uid >= 1000 and entry.pw_uid != 65534:
            users.add(entry.pw_name)
    return KnownIdentifiers.of(hosts, users, homes)


@dataclass(frozen=True)
class Prepared:
    """A report ready to send: the typed value, its one serialisation, and what was dropped."""

    report: Report
    body: bytes
    redactions: list[Redaction]
    facts: ClusterFacts
    session_id: str
    remembered: SessionState
    blanked: dict[str, str]  # field -> why it is sent as null (redaction, pending consent)
    id_source: str = ID_RANDOM  # where session_id came from (state.ID_FROM_CLUSTER/ID_RANDOM)


def choose_session_id(facts: ClusterFacts, remembered: SessionState) -> tuple[str, str]:
    """The session's id and where it came from.

    Once a report of the session carried an id, that id is kept: a provider outage, a
    restart or a retry never changes it (a report without the provider's fields carries
    them empty, under the same identity). Before that: the cluster id when the provider
    gives a sane one (as Ray 2.60 does), else our random id.
    """
    if remembered.id_fixed and remembered.id_source is not None:
        return remembered.session_id, remembered.id_source
    cid = facts.provider.cluster_id if facts.provider else None
    # Ray's cluster id is 28 bytes (56 hex digits); 32 at least keeps out short hex values
    # such as a MAC address written without separators.
    if cid and 32 <= len(cid) <= 128 and set(cid) <= _HEX_ID:
        return cid, ID_FROM_CLUSTER
    return remembered.session_id, ID_RANDOM


async def prepare_report(
    settings: Settings,
    session: Session,
    state: State,
    known: KnownIdentifiers,
    now_ms: int,
    withheld: tuple[str, ...] = (),
) -> Prepared:
    """Gather, build, guard and serialise: everything before sending (shared with preview).

    `withheld` are fields newer than the field set consent was given for: sent as null.
    """
    facts = await gather(
        session,
        Limits(settings.socket_timeout_s, settings.socket_max_bytes),
        settings.cluster_config,
        settings.kuberay_in_use,
        settings.kubernetes_in_use,
    )
    remembered = state.for_session(session.key)
    session_id, id_source = choose_session_id(facts, remembered)
    report = build_report(
        source=settings.source,
        now_ms=now_ms,
        counters=remembered.counters,
        session_id=session_id,
        metadata=facts.metadata,
        totals=facts.totals,
        running_jobs=facts.running_jobs,
        config=facts.config,
        provider=facts.provider,
        extra_tags=settings.extra_tags,
    )
    clean, redactions = guard(report, known)
    blanked = {name: f"redacted by {settings.source_of('redact')}" for name in settings.redact}
    blanked.update({name: "newer than the field set consent was given for" for name in withheld})
    final = clean.with_fields(**nulls_for(list(blanked)))
    return Prepared(
        final, serialise(final), redactions, facts, session_id, remembered, blanked, id_source
    )


NOT_RUNNING = "the cluster is not running (its dashboard sockets are absent or refuse)"


def cluster_refusal(facts: ClusterFacts) -> str | None:
    """Why this session must not be reported at all, or None when it may be."""
    md = facts.metadata
    if md is None and cluster_not_running(facts):
        return NOT_RUNNING
    if md is None:
        return "cluster metadata unavailable, so the cluster's consent cannot be confirmed"
    if md.ray_init_cluster:
        return "a local ray.init() cluster (never reported)"
    if not md.usage_stats_enabled:
        return "the cluster was started with usage stats disabled"
    return None


def cluster_not_running(facts: ClusterFacts) -> bool:
    """True when no dashboard socket exists or accepts: a stopped (or dashboard-less) head."""
    if facts.running_jobs is not None or facts.totals.total_num_nodes is not None:
        return False  # some dashboard socket answered: the head runs, partly broken
    dashboard = [p for p in facts.problems if p.source.startswith("dash_")]
    return bool(dashboard) and all(
        "absent" in p.problem or "Connection refused" in p.problem for p in dashboard
    )
