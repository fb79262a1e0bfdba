"""Everything a cycle does before sending: gather, decide, build, guard, serialise.

Shared by the daemon and `usagestatsd preview`, so that preview shows exactly what the
next report would carry. Reads the cluster; writes nothing, sends nothing.
"""

from __future__ import annotations

import contextlib
import pwd
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from usagestatsd.config.settings import Settings
from usagestatsd.contract.guard import KnownIdentifiers, Redaction, guard
from usagestatsd.contract.ray_tags import RAY_TAG_KEYS
from usagestatsd.contract.report import Report, build_report, nulls_for, serialise
from usagestatsd.facts.cluster import ClusterFacts, gather
from usagestatsd.facts.fetch import Limits
from usagestatsd.facts.session import Session, trusted_uids
from usagestatsd.store.state import (
    ID_FROM_CLUSTER,
    ID_FROM_METADATA,
    ID_RANDOM,
    SessionState,
    State,
)

RAY_CLUSTER_ID = re.compile(r"[0-9a-f]{56}")


def collect_known_identifiers() -> KnownIdentifiers:
    """This machine's host names, human users' names and homes, and every account name,
    for the privacy guard."""
    hosts = {socket.gethostname()}
    with contextlib.suppress(OSError), open("/etc/hostname") as handle:
        hosts.add(handle.read().strip())
    users, homes, accounts = set(), set(), set()
    for entry in pwd.getpwall():
        homes.add(entry.pw_dir)
        accounts.add(entry.pw_name)  # a value that is an account name names someone here
        if entry.pw_uid >= 1000 and entry.pw_uid != 65534:
            users.add(entry.pw_name)
    return KnownIdentifiers.of(hosts, users, homes, accounts)


@dataclass(frozen=True)
class Disclosure:
    """What a report may contain, decided once at start and passed down as one value.

    `known`: this machine's identifiers, which the privacy guard keeps out. `blanked`: the
    fields sent as null, each with why (redacted by a setting, or newer than the field set
    consent was given for).
    """

    known: KnownIdentifiers
    blanked: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(
        cls, settings: Settings, known: KnownIdentifiers, withheld: tuple[str, ...] = ()
    ) -> Disclosure:
        """From the redact setting and the fields consent was not given for (`withheld`)."""
        why = f"redacted by {settings.source_of('redact')}"
        blanked = dict.fromkeys(settings.redact, why)
        blanked.update(dict.fromkeys(withheld, "newer than the field set consent was given for"))
        return cls(known, blanked)


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
    them empty, under the same identity). Before that: Ray's own id for this version (the
    metadata's UUID up to Ray 2.20, later the cluster id when it is exactly Ray's form, which
    only the provider reads), else our random id.
    """
    if remembered.id_fixed and remembered.id_source is not None:
        return remembered.session_id, remembered.id_source
    if facts.metadata is not None and facts.metadata.session_id is not None:
        # Ray up to 2.20 reports the UUID its cluster metadata keeps.
        return facts.metadata.session_id, ID_FROM_METADATA
    cid = facts.provider.cluster_id if facts.provider else None
    # Ray's ClusterID is 28 bytes, sent as 56 lower-case hex digits (recorded 2.60
    # report_payload.json). Any other hex (a MAC, a key, an account id) is not taken.
    if cid is not None and RAY_CLUSTER_ID.fullmatch(cid):
        return cid, ID_FROM_CLUSTER
    return remembered.session_id, ID_RANDOM


def another_start(prepared: Prepared) -> bool:
    """Whether the facts are of another `ray start` than the one this session's reports name.

    Up to Ray 2.20 each `ray start` writes a new UUID into its cluster metadata, once. A
    session whose reports carry that UUID, shown metadata with another, is being read
    through a head that was restarted before the daemon followed the new session: a report
    would pair this session's identity and counters with the new cluster's facts.
    """
    remembered, metadata = prepared.remembered, prepared.facts.metadata
    if remembered.id_source != ID_FROM_METADATA or metadata is None:
        return False
    return metadata.session_id is not None and metadata.session_id != remembered.session_id


def provider_checked(facts: ClusterFacts) -> tuple[ClusterFacts, list[Redaction]]:
    """The provider's facts with only Ray's own tag names kept, and the cluster id checked."""
    provider = facts.provider
    if provider is None:
        return facts, []
    redactions = []
    if provider.cluster_id is not None and not RAY_CLUSTER_ID.fullmatch(provider.cluster_id):
        redactions.append(Redaction("session_id", "cluster_id is not Ray's 56-hex-digit form"))
    tags = {}
    for index, (key, value) in enumerate(provider.extra_usage_tags.items()):
        if key in RAY_TAG_KEYS:
            tags[key] = value
        else:  # the name itself may identify: name its position, never the name
            redactions.append(Redaction(f"extra_usage_tags[#{index}]", "not one of Ray's tags"))
    if len(tags) == len(provider.extra_usage_tags):
        return facts, redactions
    return replace(facts, provider=replace(provider, extra_usage_tags=tags)), redactions


async def prepare_report(
    settings: Settings,
    session: Session,
    state: State,
    disclosure: Disclosure,
    now_ms: int,
) -> Prepared:
    """Gather, build, guard and serialise: everything before sending (shared with preview)."""
    facts = await gather(
        session,
        Limits(
            settings.socket_timeout_s,
            settings.socket_max_bytes,
            trusted_uids=trusted_uids(settings.ray_user),
        ),
        settings.cluster_config,
        settings.kuberay_in_use,
        settings.kubernetes_in_use,
        settings.dashboard_address,
    )
    facts, refused = provider_checked(facts)
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
    clean, redactions = guard(report, disclosure.known)
    redactions = refused + redactions
    blanked = dict(disclosure.blanked)
    final = clean.with_fields(**nulls_for(list(blanked)))
    return Prepared(
        final, serialise(final), redactions, facts, session_id, remembered, blanked, id_source
    )
