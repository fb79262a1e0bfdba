"""Why a session must not be reported at all: the refusal as a value, decided from the facts.

A refusal's kind decides everything the daemon does about it (its log level, whether each
failing source gets its own warning); its message is only shown (log, STATUS=, `status`,
`preview`), so rewording a message never changes behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal

from usagestatsd.contract.ray_support import unsupported
from usagestatsd.facts.cluster import SOCKETS, ClusterFacts
from usagestatsd.facts.sources import Asked, Failure

Level = Literal["info", "warning"]


class RefusalKind(Enum):
    """The reasons not to report a session; each carries how it is logged."""

    #                (level,     per-source warnings)
    NOT_RUNNING = ("info", False)  # a stopped head: one info line, not one per socket
    CANNOT_READ = ("warning", False)  # runs, but unreadable: one warning that says the fix
    UNSUPPORTED = ("warning", False)  # a Ray version that cannot be reported: named once
    NO_METADATA = ("warning", True)  # the cluster's consent cannot be confirmed
    LOCAL_CLUSTER = ("info", True)  # a local ray.init() cluster
    STATS_DISABLED = ("info", True)  # started with usage stats disabled

    def __init__(self, level: Level, source_warnings: bool) -> None:
        self.level: Level = level
        # Whether each failing source is worth a warning of its own beside this refusal.
        self.source_warnings = source_warnings


NOT_RUNNING = (
    "the cluster is not running (its dashboard is absent or refuses, "
    "and no process of its session runs)"
)
CANNOT_READ = "the cluster runs but its facts cannot be read"


@dataclass(frozen=True)
class Refusal:
    """One refusal: what kind (decides), and the words (shown)."""

    kind: RefusalKind
    message: str

    @property
    def level(self) -> Level:
        """The log level of its `session.not_reported` event."""
        return self.kind.level


def cluster_refusal(facts: ClusterFacts) -> Refusal | None:
    """Why this session must not be reported at all, or None when it may be."""
    md = facts.metadata
    if md is None and cluster_not_running(facts):
        return Refusal(RefusalKind.NOT_RUNNING, NOT_RUNNING)
    version = md.ray_version if md else facts.origins.ray_version if facts.origins else None
    why = unsupported(version, md is not None)
    if why is not None:
        return Refusal(RefusalKind.UNSUPPORTED, why)
    if md is None and facts.session_running:
        return Refusal(RefusalKind.CANNOT_READ, cannot_read(facts))
    if md is None:
        return Refusal(
            RefusalKind.NO_METADATA,
            "cluster metadata unavailable, so the cluster's consent cannot be confirmed",
        )
    if md.ray_init_cluster:
        return Refusal(RefusalKind.LOCAL_CLUSTER, "a local ray.init() cluster (never reported)")
    if not md.usage_stats_enabled:
        return Refusal(
            RefusalKind.STATS_DISABLED, "the cluster was started with usage stats disabled"
        )
    return None


def cluster_not_running(facts: ClusterFacts) -> bool:
    """True when no dashboard answers and nothing says the head runs."""
    if facts.metadata is not None or facts.session_running is not False:
        return False  # a dashboard answered, or a process of the session runs
    if facts.origins is not None and facts.origins.dashboard != SOCKETS:
        # No dash_* sockets and no visible process of the session; but a listener whose
        # holder cannot be seen (/proc hidden from this user) may well be Ray's: unknown.
        return not any(p.failure is Failure.HOLDER_UNSEEN for p in facts.problems)
    dashboard = [p for p in facts.problems if p.asked.dashboard]
    return bool(dashboard) and all(
        p.failure in (Failure.ABSENT, Failure.NOBODY_LISTENS) for p in dashboard
    )


def cannot_read(facts: ClusterFacts) -> str:
    """One message for a running cluster whose dashboard cannot be read: version, tries, fix."""
    origins = facts.origins
    version = origins.ray_version if origins and origins.ray_version else "(version unknown)"
    route = origins.dashboard if origins else SOCKETS
    seen: dict[str, None] = {}
    for problem in facts.problems:
        if problem.asked is not Asked.PROVIDER:
            seen.setdefault(problem.problem, None)
    tried = "; ".join(seen) or "no answer"
    return (
        f"{CANNOT_READ}: Ray {version}, dashboard tried over {route}: {tried}. "
        "To fix: run usagestatsd as the user that started Ray (or root); if Ray was "
        "started with --dashboard-host/--dashboard-port, set dashboard_address "
        "(USAGESTATSD_DASHBOARD_ADDRESS) to that HOST:PORT; a head started with "
        "--include-dashboard=false cannot be reported"
    )
