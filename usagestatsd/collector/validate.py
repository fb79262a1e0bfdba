"""A received body becomes a stored report, or a rejection with a reason. Pure.

Order: size, JSON (depth, NaN), schema 0.1 (the daemon's own check), size and count limits
on strings and lists, then the daemon's privacy guard. The guard nulls an identifying or
malformed scalar and drops an offending list item or tag; only a `session_id` that fails it
rejects the whole report (without a trustworthy id the report cannot be deleted on request).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from usagestatsd.contract.fields import BY_NAME, MAX_TAG_KEY_CHARS, REPORT_FIELDS
from usagestatsd.contract.guard import KnownIdentifiers, Redaction, guard
from usagestatsd.contract.report import (
    Report,
    SchemaError,
    check_schema,
    serialise,
    serialise_body,
)

MAX_STRING_CHARS = 1024
MAX_LIST_ITEMS = 256
MAX_TAGS = 256
MAX_DEPTH = 4  # schema 0.1 needs 2: the report object, and a list or the tags inside it
_STRING = re.compile(rb'"[^"]*"')
_OPENERS, _CLOSERS = frozenset(b"[{"), frozenset(b"]}")
_STRUCTURE = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
MAX_INTEGER = 2**53  # stored as BIGINT; JSON readers lose precision beyond this
_NOBODY = KnownIdentifiers()


# The facts a session row keeps from its newest report (the store and the copy write
# these columns).
SESSION_FACTS = (
    "ray_version",
    "python_version",
    "os",
    "source",
    "cloud_provider",
    "head_node_instance_type",
    "total_num_nodes",
    "total_num_cpus",
    "total_num_gpus",
    "total_memory_gb",
)


@dataclass(frozen=True)
class Accepted:
    """A report to store: its identity, times, the exact bytes kept, and what the store's
    rollups take from it (taken out here, in the validation worker, so that only these
    few values, not the whole report, travel back to the collector's process)."""

    session_id: str
    seq_number: int
    collect_ms: int
    body: bytes
    facts: tuple[Any, ...]  # the report's SESSION_FACTS, in that order
    facets: tuple[tuple[str, str], ...]  # (facet, value): library, hardware, instance_type
    redactions: tuple[Redaction, ...]

    def __reduce__(self) -> tuple[Any, ...]:
        # A plain tuple of values: pickled for every report on its way back from a worker.
        return (Accepted, (*(getattr(self, name) for name in _ACCEPTED_FIELDS),))

    @property
    def ray_version(self) -> str | None:
        """The report's Ray version (None when it carries none)."""
        version: str | None = self.facts[0]
        return version


def accepted(clean: Report, stored: bytes, redactions: Sequence[Redaction]) -> Accepted:
    """What the store needs of a checked report whose stored bytes are `stored`."""
    facets = [("library", v) for v in clean.library_usages]
    facets += [("hardware", v) for v in clean.hardware_usages]
    types = [clean.head_node_instance_type, *(clean.worker_node_instance_types or ())]
    facets += [("instance_type", t) for t in types if t]
    return Accepted(
        session_id=clean.session_id,
        seq_number=clean.seq_number,
        collect_ms=clean.collect_timestamp_ms,
        body=stored,
        facts=tuple(getattr(clean, name) for name in SESSION_FACTS),
        facets=tuple(facets),
        redactions=tuple(redactions),
    )


@dataclass(frozen=True)
class Rejected:
    """Why a body was refused: a metric label, and a message naming the field (never a value)."""

    reason: str
    detail: str


_ACCEPTED_FIELDS = tuple(f.name for f in fields(Accepted))


def nests_deeper(raw: bytes, limit: int) -> bool:
    """Whether the JSON text opens more than `limit` arrays/objects inside each other.

    Read from the bytes, before parsing: every later step (the parser, the schema check,
    the guard) walks the value recursively, and a body nested hundreds deep would raise
    RecursionError in one of them. Strings are skipped whole, so a bracket inside one is
    not counted; a malformed body that fools the count is refused by the parser.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False  # not even counting those inside strings do they reach it
    if b"\\" in raw:
        tokens = [t[0] for t in _STRUCTURE.findall(raw) if len(t) == 1]
    else:
        # With no escapes, only the quotes and brackets decide: the rest, then every
        # string, is dropped in C, and the loop sees the brackets alone.
        tokens = list(_STRING.sub(b"", raw.translate(None, _NOT_STRUCTURE)))
    depth = 0
    for byte in tokens:
        if byte in _OPENERS:
            depth += 1
            if depth > limit:
                return True
        elif byte in _CLOSERS:
            depth -= 1
    return False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _limits(body: dict[str, Any]) -> str | None:
    """The first field over a size or count limit, or None."""
    for name, value in body.items():  # the keys and types check_schema let through
        kind = type(value)
        if kind is str:
            over = len(value) > MAX_STRING_CHARS
        elif kind is int:
            over = value > MAX_INTEGER
        elif kind is list:
            over = len(value) > MAX_LIST_ITEMS or any(len(v) > MAX_STRING_CHARS for v in value)
        elif kind is dict:
            over = len(value) > MAX_TAGS or any(
                len(k) > MAX_TAG_KEY_CHARS or len(v) > MAX_STRING_CHARS for k, v in value.items()
            )
        else:
            over = False
        if over:
            return name
    return None


def to_report(body: dict[str, Any]) -> Report:
    """A schema-checked body as a Report value (lists become tuples); a key an older Ray's
    report lacks is blank (serialise leaves it out again)."""
    values: dict[str, Any] = {
        name: BY_NAME[name].blank for name in REPORT_FIELDS if name not in body
    }
    values.update({k: tuple(v) if isinstance(v, list) else v for k, v in body.items()})
    return Report(**values)


def validate(raw: bytes, max_bytes: int) -> Accepted | Rejected:
    """Check one received body; never raises."""
    if len(raw) > max_bytes:
        return Rejected("too_large", f"body larger than {max_bytes} bytes")
    if nests_deeper(raw, MAX_DEPTH):
        return Rejected("schema", "body nests deeper than schema 0.1 allows")
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return Rejected("not_json", "body is not UTF-8 JSON")
    if not isinstance(body, dict):
        return Rejected("schema", "body is not a JSON object")
    try:
        check_schema(body)
    except SchemaError as exc:
        return Rejected("schema", str(exc))
    over = _limits(body)
    if over is not None:
        return Rejected("limits", f"report field {over} is over the size or count limit")
    try:
        clean, redactions = guard(to_report(body), _NOBODY)
    except ValueError:
        return Rejected("privacy", "report field session_id failed the privacy guard")
    if redactions:
        try:
            # The guard nulls an out-of-range collect_timestamp_ms, which schema 0.1 forbids.
            stored = serialise(clean)
        except SchemaError:
            return Rejected("limits", "report field collect_timestamp_ms is out of range")
    else:
        stored = serialise_body(body)  # the guard left every received value as it was
    if len(stored) > max_bytes:
        # Stored as ASCII JSON: a character outside it takes 6 or 12 bytes there.
        return Rejected("too_large", f"report larger than {max_bytes} bytes once stored")
    return accepted(clean, stored, redactions)


def validate_many(raws: Sequence[bytes], max_bytes: int) -> list[Accepted | Rejected | Exception]:
    """`validate` for each body of a batch: one round trip to a worker process for all.

    An exception (a bug: validate never raises) is returned in the body's place, so that
    only that body's request fails, as it would on its own.
    """
    results: list[Accepted | Rejected | Exception] = []
    for raw in raws:
        try:
            results.append(validate(raw, max_bytes))
        except Exception as exc:
            results.append(exc)
    return results
