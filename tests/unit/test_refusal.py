"""A refusal is a value: its kind decides (log level, per-source warnings), never its words."""

from __future__ import annotations

import pytest

from usagestatsd.contract.report import ClusterConfigFacts, ClusterMetadata, Origins, ResourceTotals
from usagestatsd.cycle.refusal import CANNOT_READ, NOT_RUNNING, RefusalKind, cluster_refusal
from usagestatsd.facts.cluster import SOCKETS, ClusterFacts
from usagestatsd.facts.sources import Asked, Failure, SourceError


def facts(
    problems: tuple[SourceError, ...] = (),
    metadata: ClusterMetadata | None = None,
    running: bool | None = False,
    dashboard: str = SOCKETS,
) -> ClusterFacts:
    origins = Origins("k", "2.60.0", dashboard, None, None, None, None, None)
    return ClusterFacts(
        metadata,
        ResourceTotals(),
        None,
        ClusterConfigFacts(),
        None,
        problems,
        False,
        origins,
        running,
    )


def metadata(enabled: bool = True, local: bool = False) -> ClusterMetadata:
    return ClusterMetadata("2.60.0", "3.11.2", "abc", "linux", 1, "glibc", local, enabled)


def dash(failure: Failure, words: str) -> SourceError:
    return SourceError(
        "dash_ReportHead /api/v0/cluster_metadata", words, failure, Asked.DASHBOARD_METADATA
    )


def test_a_stopped_head_is_known_by_the_kind_of_failure_not_by_its_words() -> None:
    """Absent sockets or nobody listening: not running, however the messages are worded."""
    worded_otherwise = (dash(Failure.ABSENT, "gone"), dash(Failure.NOBODY_LISTENS, "nope"))
    refusal = cluster_refusal(facts(worded_otherwise))
    assert refusal is not None and refusal.kind is RefusalKind.NOT_RUNNING
    assert refusal.message == NOT_RUNNING and refusal.level == "info"
    # The old test of the words ("absent", "Connection refused") no longer decides anything.
    misleading = (dash(Failure.OTHER, "socket /tmp/absent/x: Connection refused"),)
    refusal = cluster_refusal(facts(misleading))
    assert refusal is not None and refusal.kind is RefusalKind.NO_METADATA


def test_an_unseen_listener_over_tcp_is_not_taken_for_a_stopped_head() -> None:
    """A dashboard port held by a process this user cannot see may be Ray's: not 'stopped'."""
    unseen = SourceError("dashboard 127.0.0.1:8265", "refused: hidden", Failure.HOLDER_UNSEEN)
    tcp = "dashboard HTTP 127.0.0.1:8265 (Ray's default)"
    refusal = cluster_refusal(facts((unseen,), dashboard=tcp))
    assert refusal is not None and refusal.kind is RefusalKind.NO_METADATA
    other = SourceError("dashboard 127.0.0.1:8265", "cannot see which process", Failure.OTHER)
    refusal = cluster_refusal(facts((other,), dashboard=tcp))
    assert refusal is not None and refusal.kind is RefusalKind.NOT_RUNNING


@pytest.mark.parametrize(
    ("given", "kind", "level", "source_warnings"),
    [
        (
            facts((dash(Failure.OTHER, "x"),), running=True),
            RefusalKind.CANNOT_READ,
            "warning",
            False,
        ),
        (facts(running=None), RefusalKind.NO_METADATA, "warning", True),
        (facts(metadata=metadata(local=True)), RefusalKind.LOCAL_CLUSTER, "info", True),
        (facts(metadata=metadata(enabled=False)), RefusalKind.STATS_DISABLED, "info", True),
    ],
)
def test_each_kind_carries_its_log_level(
    given: ClusterFacts, kind: RefusalKind, level: str, source_warnings: bool
) -> None:
    refusal = cluster_refusal(given)
    assert refusal is not None and refusal.kind is kind
    assert refusal.level == level and kind.source_warnings is source_warnings


def test_a_readable_cluster_that_allows_usage_stats_is_not_refused() -> None:
    assert cluster_refusal(facts(metadata=metadata())) is None


def test_cannot_read_says_the_version_and_what_was_tried() -> None:
    refusal = cluster_refusal(facts((dash(Failure.OTHER, "HTTP status 500"),), running=True))
    assert refusal is not None and refusal.message.startswith(f"{CANNOT_READ}: Ray 2.60.0")
    assert "HTTP status 500" in refusal.message
