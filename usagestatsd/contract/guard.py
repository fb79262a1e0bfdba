"""The privacy guard: nothing that identifies a person, host or address leaves the machine.

Pure. Every string a report carries came from the cluster (untrusted) or from settings.
Each field has an allow-list shape and a length; each of Ray's tags has its own value shape
(contract/ray_tags.py); on top of that, detectors (contract/identifiers.py) look for addresses,
paths,
host
names and this machine's own identifiers. An offending scalar becomes null, an offending
list item or tag is dropped, and each touch is returned as a `Redaction` that names the
field and the kind of problem, never the value itself.

Bounded: a value longer than its field allows is refused before any pattern runs on it,
at most `MAX_ITEMS` list items and tags are looked at, at most `MAX_CHECKED_CHARS` of text
per report go through the detectors (the rest is refused unread), and every detector is
linear. So the guard's worst case is a few milliseconds whatever the report holds
(bench/guard.py), and it runs on the event loop: a worker thread would still hold the GIL
for that long, and would add a hand-off to every cycle.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from usagestatsd.contract.fields import BY_NAME, FIELDS, MAX_ITEMS, MAX_TAG_KEY_CHARS, Field, Json
from usagestatsd.contract.identifiers import SECRET_WORDS, KnownIdentifiers, identifying_reason
from usagestatsd.contract.ray_tags import RAY_TAG_SHAPES, TagShape
from usagestatsd.contract.report import Report

__all__ = ["KnownIdentifiers", "Redaction", "forget_verdicts", "guard", "identifying_reason"]

# Each field's shape (what a legitimate value looks like) or limit is declared with the
# field (contract/fields.py). The guard checks them by kind, in this order (the order of its
# findings).
_STRINGS = tuple(f for f in FIELDS if f.json is Json.STRING and f.shape is not None)
_LISTS = tuple(f for f in FIELDS if f.json is Json.STRING_LIST)
_TAGS = BY_NAME["extra_usage_tags"]
_NUMBERS = tuple(
    f
    for kind in (Json.INTEGER, Json.NUMBER)
    for f in FIELDS
    if f.json is kind and f.limit is not None
)
# The operator's own tags (any name): the general tag shape.
_ANY_TAG = TagShape(_TAGS.shape or re.compile("(?!)"), _TAGS.max_chars or 0)
# The text the detectors read per report: Ray's reports carry a few KB, and this bounds the
# guard's time whatever a report holds. Each value also costs `_VALUE_COST` characters'
# worth (the fixed cost of running the detectors at all).
MAX_CHECKED_CHARS = 8 << 10
_VALUE_COST = 16
_OVER_BUDGET = f"the report holds more text than the guard reads ({MAX_CHECKED_CHARS} characters)"
_SECRET_NAME = re.compile(r"(?i)(?:^|[^a-z])(?:" + SECRET_WORDS + r")(?:$|[^a-z])")
# A personal name as free text writes it: two or more capitalised words ("Alice Smith",
# "Smith, Alice"). A name alone ("alice") cannot be told from a word; the operator's own tag
# values are held to a single token (settings.parse_extra_tags), Ray's tags to their shapes
# (contract/ray_tags.py), and a value that is a local account name is refused
# (contract/identifiers.py).
_FULL_NAME = re.compile(
    r"(?<![A-Za-z])[A-Z][a-z]{1,64}(?:,? {1,4}(?:[A-Z]\.|[A-Z][a-z]{1,64})){1,16}(?![A-Za-z])"
)


# Values up to this long have their detectors' verdict remembered (per process, the most
# recent `_VERDICTS_KEPT`): a collector sees the same library names, tag values and versions
# in report after report. The verdict depends on nothing but the value and the machine's
# own names (identifying_reason is pure), so a remembered one is the one a new run gives.
_REMEMBERED_CHARS = 128
_VERDICTS_KEPT = 4096


@functools.lru_cache(maxsize=_VERDICTS_KEPT)
def _remembered_reason(value: str, known: KnownIdentifiers) -> str | None:
    return identifying_reason(value, known)


def forget_verdicts() -> None:
    """Drop the remembered verdicts: a bench measuring the worst case (a sender whose
    values are all new) starts from none."""
    _remembered_reason.cache_clear()


def _identifying(value: str, known: KnownIdentifiers) -> str | None:
    if len(value) <= _REMEMBERED_CHARS:
        return _remembered_reason(value, known)
    return identifying_reason(value, known)


@dataclass(frozen=True)
class Redaction:
    """One value the guard removed: which field, and what kind of identifier it looked like."""

    field: str
    reason: str


def _too_long(value: str, max_chars: int | None) -> str | None:
    if max_chars is not None and len(value) > max_chars:
        return f"longer than {max_chars} characters"
    return None


@dataclass
class _Pass:
    known: KnownIdentifiers
    redactions: list[Redaction] = field(default_factory=list)
    budget: int = MAX_CHECKED_CHARS

    def problem(
        self, value: str, shape: re.Pattern[str] | None, max_chars: int | None
    ) -> str | None:
        # The length first: no pattern ever runs on a value longer than its field allows.
        reason = _too_long(value, max_chars) or self.spend(len(value))
        if reason:
            return reason
        reason = _identifying(value, self.known)
        if reason:
            return reason
        if shape is None or not shape.fullmatch(value):  # no declared shape: nothing passes
            return "unexpected characters or length"
        return None

    def spend(self, chars: int) -> str | None:
        cost = chars + _VALUE_COST
        if cost > self.budget:
            self.budget = 0
            return _OVER_BUDGET
        self.budget -= cost
        return None

    def scalar(self, spec: Field, value: str | None) -> str | None:
        if value is None:
            return None
        # A session id is random by construction (a UUID, hex): its digit runs are not
        # addresses or account ids (about 1 UUID in 40 looked like one, and its session
        # crashed). Its length is bounded before its shape is matched.
        bounded = spec.max_chars is not None and len(value) <= spec.max_chars
        if spec.name == "session_id" and bounded and spec.shape and spec.shape.fullmatch(value):
            return value
        reason = self.problem(value, spec.shape, spec.max_chars)
        if reason:
            self.redactions.append(Redaction(spec.name, reason))
            return None
        return value

    def items(self, spec: Field, values: Iterable[str]) -> tuple[str, ...]:
        kept = []
        for index, value in enumerate(values):
            if index == MAX_ITEMS:
                self.redactions.append(Redaction(spec.name, f"more than {MAX_ITEMS} items"))
                break
            reason = self.problem(value, spec.shape, spec.max_chars)
            if reason:
                self.redactions.append(Redaction(spec.name, reason))
            else:
                kept.append(value)
        return tuple(kept)

    def tags(self, tags: Mapping[str, str]) -> dict[str, str]:
        kept: dict[str, str] = {}
        for index, (key, value) in enumerate(tags.items()):
            if index == MAX_ITEMS:
                self.redactions.append(Redaction(_TAGS.name, f"more than {MAX_ITEMS} items"))
                break
            key_reason = self.key_problem(key)
            if key_reason:
                # The key itself is suspect: do not echo it, name its position.
                self.redactions.append(Redaction(f"extra_usage_tags[#{index}]", key_reason))
                continue
            value_reason = self.tag_value(RAY_TAG_SHAPES.get(key, _ANY_TAG), value)
            if value_reason:
                self.redactions.append(Redaction(f"extra_usage_tags.{key}", value_reason))
                continue
            kept[key] = value
        return kept

    def key_problem(self, key: str) -> str | None:
        if key in RAY_TAG_SHAPES:  # Ray's own names: nothing to detect in them
            return None
        return self.problem(key, _TAGS.key_shape, MAX_TAG_KEY_CHARS) or (
            "secret" if _SECRET_NAME.search(key) else None
        )

    def tag_value(self, shape: TagShape, value: str) -> str | None:
        if shape.refused:
            return shape.refused
        if shape.closed:  # Ray's own words or a number: the shape is the whole check
            too_long = _too_long(value, shape.max_chars)
            ok = too_long is None and shape.pattern.fullmatch(value)
            return None if ok else too_long or "not a value Ray writes under this tag"
        return self.problem(value, shape.pattern, shape.max_chars) or (
            "personal name" if _FULL_NAME.search(value) else None
        )

    def number(self, spec: Field, value: float | None) -> Any:
        if value is None or spec.limit is None:
            return value
        if spec.json is Json.INTEGER:
            ok = isinstance(value, int) and 0 <= value <= spec.limit
        else:
            ok = math.isfinite(value) and 0 <= value <= spec.limit
        if not ok:
            self.redactions.append(Redaction(spec.name, "number out of range"))
            return None
        return value


def guard(report: Report, known: KnownIdentifiers) -> tuple[Report, list[Redaction]]:
    """The report with every identifying or malformed value removed, and what was removed."""
    run = _Pass(known)
    changes: dict[str, Any] = {f.name: run.scalar(f, getattr(report, f.name)) for f in _STRINGS}
    for f in _LISTS:
        if getattr(report, f.name) is not None:
            changes[f.name] = run.items(f, getattr(report, f.name))
    changes[_TAGS.name] = run.tags(getattr(report, _TAGS.name))
    for f in _NUMBERS:
        changes[f.name] = run.number(f, getattr(report, f.name))
    if changes["session_id"] is None:
        # session_id is never null: a bad one means a bug upstream, so refuse loudly.
        raise ValueError("session_id failed the privacy guard")
    if not run.redactions and changes["source"] is not None:
        # Nothing removed: every value is the one received, so the report stands as it is
        # (a collector guards every report it takes; a copy of each costs as much as a check).
        return report, run.redactions
    if changes["source"] is None:
        changes["source"] = "OSS"
    return report.with_fields(**changes), run.redactions
