"""Which report fields each consent version covers (versioned consent, docs/consent.md).

Consent records the field-set version a person agreed to. A release that adds fields
adds a version; fields newer than the accepted version are sent as null until the new
version is accepted. Pure.
"""

from __future__ import annotations

from usagestatsd.report import REPORT_FIELDS

# Version 1: the fields of Ray's original usage-stats policy (Ray 1.13 to 2.x).
# Version 2: adds what Ray's reporter learned to collect later, about the machine itself.
_ADDED_IN: dict[int, tuple[str, ...]] = {
    2: ("libc_version", "hardware_usages"),
}
CURRENT_VERSION = max(_ADDED_IN)
# Fields a person never has to accept separately: the report cannot exist without them.
_STRUCTURAL = (
    "schema_version",
    "session_id",
    "collect_timestamp_ms",
    "seq_number",
    "total_success",
    "total_failed",
    "source",
)


def fields_of(version: int) -> frozenset[str]:
    """The report fields covered by consent at `version`."""
    newer = {f for v, added in _ADDED_IN.items() if v > version for f in added}
    return frozenset(REPORT_FIELDS) - newer


def withheld(accepted: int) -> tuple[str, ...]:
    """Fields to send as null because they are newer than the accepted version."""
    return tuple(f for f in REPORT_FIELDS if f not in fields_of(accepted))


def redactable(name: str) -> bool:
    """True for fields an administrator may blank (not the ones that identify the report)."""
    return name in REPORT_FIELDS and name not in _STRUCTURAL
