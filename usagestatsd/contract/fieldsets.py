"""Which report fields each consent version covers (versioned consent, docs/consent.md).

Consent records the field-set version a person agreed to. A release that adds fields
adds a version; fields newer than the accepted version are sent as null until the new
version is accepted. Pure. Each field's version (`since`) and whether it may be redacted
are declared with the field, in contract/fields.py.
"""

from __future__ import annotations

from usagestatsd.contract.fields import BASE_VERSION, BY_NAME, FIELDS, REPORT_FIELDS
from usagestatsd.contract.fields import CURRENT_VERSION as CURRENT_VERSION


def fields_of(version: int) -> frozenset[str]:
    """The report fields covered by consent at `version` (below the base set: the base set)."""
    covered = max(version, BASE_VERSION)
    return frozenset(f.name for f in FIELDS if f.since <= covered)


def withheld(accepted: int) -> tuple[str, ...]:
    """Fields to send as null because they are newer than the accepted version."""
    return tuple(f for f in REPORT_FIELDS if f not in fields_of(accepted))


def redactable(name: str) -> bool:
    """True for fields an administrator may blank (not the ones that identify the report)."""
    return name in BY_NAME and BY_NAME[name].redactable
