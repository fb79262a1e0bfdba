"""Counters for `GET /metrics`, in Prometheus' text format. Pure."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

REJECT_REASONS = (
    "too_large",
    "too_slow",
    "not_json",
    "schema",
    "limits",
    "privacy",
    "unauthorized",
    "conflict",
    "ahead",
)


@dataclass
class Metrics:
    """What the collector counted since it started."""

    ingested: int = 0
    duplicates: int = 0
    redacted_values: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    throttled: int = 0
    deletion_requests: int = 0
    deleted_sessions: int = 0
    deleted_reports: int = 0
    expired_reports: int = 0

    def render(self, stored_reports: int, stored_sessions: int, pending: int) -> str:
        """The exposition text."""
        out: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, int]]) -> None:
            out.append(f"# HELP usagestatsd_collector_{name} {help_text}")
            out.append(f"# TYPE usagestatsd_collector_{name} {kind}")
            out.extend(f"usagestatsd_collector_{name}{labels} {value}" for labels, value in samples)

        metric("reports_ingested_total", "counter", "Reports stored.", [("", self.ingested)])
        metric(
            "reports_duplicate_total",
            "counter",
            "Reports received again (same session_id and seq_number), stored once.",
            [("", self.duplicates)],
        )
        metric(
            "values_redacted_total",
            "counter",
            "Values the privacy guard nulled or dropped on arrival.",
            [("", self.redacted_values)],
        )
        metric(
            "reports_rejected_total",
            "counter",
            "Reports refused, by reason.",
            [(f'{{reason="{r}"}}', self.rejected[r]) for r in REJECT_REASONS],
        )
        metric("reports_throttled_total", "counter", "Answers 429.", [("", self.throttled)])
        metric(
            "deletion_requests_total",
            "counter",
            "Deletion requests served.",
            [("", self.deletion_requests)],
        )
        metric(
            "sessions_deleted_total", "counter", "Sessions deleted.", [("", self.deleted_sessions)]
        )
        metric(
            "reports_deleted_total",
            "counter",
            "Reports deleted on request.",
            [("", self.deleted_reports)],
        )
        metric(
            "reports_expired_total",
            "counter",
            "Reports removed by retention.",
            [("", self.expired_reports)],
        )
        metric("reports_stored", "gauge", "Reports stored now.", [("", stored_reports)])
        metric("sessions_stored", "gauge", "Sessions stored now.", [("", stored_sessions)])
        metric("writes_pending", "gauge", "Reports waiting for the writer.", [("", pending)])
        return "\n".join(out) + "\n"
