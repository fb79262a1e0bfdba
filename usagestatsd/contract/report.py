"""The schema-0.1 report: a typed value, how it is built, checked and serialised.

Pure: no I/O. The field names, order and JSON types are exactly Ray's, so Ray's
endpoint accepts our reports unchanged; they are declared once, in contract/fields.py. Each report
is serialised once, by `serialise`, and those bytes are what is sent and written locally.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from usagestatsd.contract.fields import BY_NAME, FIELDS, Field, Json, ray_keys
from usagestatsd.contract.fields import (
    REPORT_FIELDS as REPORT_FIELDS,  # re-exported: Ray's key order
)
from usagestatsd.contract.fields import SCHEMA_VERSION as SCHEMA_VERSION

GIB = float(2**30)


@dataclass(frozen=True)
class ClusterMetadata:
    """What the cluster recorded about itself at start (Ray's CLUSTER_METADATA)."""

    ray_version: str | None
    python_version: str | None
    git_commit: str | None
    os: str | None
    session_start_timestamp_ms: int | None
    libc_version: str | None
    ray_init_cluster: bool | None
    # Ray stores more than the version fields only when usage stats were enabled at start.
    usage_stats_enabled: bool
    # Ray up to 2.20 reports a random id it keeps in the metadata as `session_id`.
    session_id: str | None = None


@dataclass(frozen=True)
class ClusterConfigFacts:
    """What the autoscaler's cluster config file says (cloud provider and node types)."""

    cloud_provider: str | None = None
    min_workers: int | None = None
    max_workers: int | None = None
    head_node_instance_type: str | None = None
    worker_node_instance_types: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ProviderFacts:
    """The fields only Ray's GCS holds, as the optional provider socket gave them."""

    cluster_id: str | None
    library_usages: tuple[str, ...]
    extra_usage_tags: Mapping[str, str]
    hardware_usages: tuple[str, ...]
    # Exact counts from the GCS, preferred over the dashboard's when present.
    total_num_nodes: int | None = None
    total_num_running_jobs: int | None = None
    # What `ray start` recorded, read from the GCS: Ray 1.13 to 2.2 serve it over no HTTP.
    cluster_metadata: ClusterMetadata | None = None


@dataclass(frozen=True)
class ResourceTotals:
    """Cluster-wide totals over ALIVE nodes; None where no node reports the resource."""

    total_num_nodes: int | None = None
    total_num_cpus: int | None = None
    total_num_gpus: int | None = None
    total_memory_gb: float | None = None
    total_object_store_memory_gb: float | None = None


@dataclass(frozen=True)
class Origins:
    """Where a cycle's facts came from, group by group, and the cluster's Ray version.

    Each group is "sockets" (the dashboard's dash_* Unix sockets), "dashboard HTTP" (its
    TCP port, for Ray before 2.47), "provider", or None when no source gave it.
    """

    session_key: str
    ray_version: str | None
    dashboard: str  # SOCKETS, or DASHBOARD_HTTP plus the address and how it was found
    metadata: str | None  # versions, git commit, os, libc, session start
    resources: str | None  # CPUs, GPUs, memory, object store
    nodes: str | None
    running_jobs: str | None
    gcs: str | None  # library usages, hardware usages, extra tags, cluster id
    # A dashboard socket missing from sockets/ (another user's doing?) and what was used.
    tampering: str | None = None


@dataclass(frozen=True)
class Counters:
    """Per-session report counters; the report carries the values before this attempt."""

    seq_number: int = 0
    total_success: int = 0
    total_failed: int = 0

    def after(self, success: bool) -> Counters:
        """The counters once this attempt's outcome is known."""
        return Counters(
            seq_number=self.seq_number + 1,
            total_success=self.total_success + (1 if success else 0),
            total_failed=self.total_failed + (0 if success else 1),
        )


@dataclass(frozen=True)
class Report:
    """One usage report: the declared fields (contract/fields.py), spelled out for mypy, same
    order."""

    schema_version: str
    source: str
    collect_timestamp_ms: int
    total_success: int
    total_failed: int
    seq_number: int
    ray_version: str | None
    python_version: str | None
    session_id: str
    git_commit: str | None
    os: str | None
    session_start_timestamp_ms: int | None
    cloud_provider: str | None
    min_workers: int | None
    max_workers: int | None
    head_node_instance_type: str | None
    worker_node_instance_types: tuple[str, ...] | None
    total_num_cpus: int | None
    total_num_gpus: int | None
    total_memory_gb: float | None
    total_object_store_memory_gb: float | None
    library_usages: tuple[str, ...]
    extra_usage_tags: Mapping[str, str]
    total_num_nodes: int | None
    total_num_running_jobs: int | None
    libc_version: str | None
    hardware_usages: tuple[str, ...]

    def to_json_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values: the keys Ray's own report of this `ray_version`
        carries (fields.ray_keys), in Ray's order."""
        out: dict[str, Any] = {}
        for name in ray_keys(self.ray_version):
            value = getattr(self, name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[name] = value
        return out

    def with_fields(self, **changes: Any) -> Report:
        """A copy with some fields replaced (used by the privacy guard and redaction)."""
        return replace(self, **changes)


if tuple(f.name for f in fields(Report)) != REPORT_FIELDS:
    # Only mypy needs the names written twice; never let the two lists drift apart.
    raise ImportError("report.Report does not list the fields of fields.FIELDS in order")


def build_report(
    *,
    source: str,
    now_ms: int,
    counters: Counters,
    session_id: str,
    metadata: ClusterMetadata | None,
    totals: ResourceTotals,
    running_jobs: int | None,
    config: ClusterConfigFacts,
    provider: ProviderFacts | None,
    extra_tags: Mapping[str, str],
) -> Report:
    """Assemble a report from gathered facts; a fact nobody gave stays None/empty."""
    md = metadata
    tags: dict[str, str] = dict(provider.extra_usage_tags) if provider else {}
    tags.update(extra_tags)
    return Report(
        schema_version=SCHEMA_VERSION,
        source=source,
        collect_timestamp_ms=now_ms,
        total_success=counters.total_success,
        total_failed=counters.total_failed,
        seq_number=counters.seq_number,
        ray_version=md.ray_version if md else None,
        python_version=md.python_version if md else None,
        session_id=session_id,
        git_commit=md.git_commit if md else None,
        os=md.os if md else None,
        session_start_timestamp_ms=md.session_start_timestamp_ms if md else None,
        cloud_provider=_cloud_provider(config.cloud_provider, md.ray_version if md else None),
        min_workers=config.min_workers,
        max_workers=config.max_workers,
        head_node_instance_type=config.head_node_instance_type,
        worker_node_instance_types=config.worker_node_instance_types,
        total_num_cpus=totals.total_num_cpus,
        total_num_gpus=totals.total_num_gpus,
        total_memory_gb=totals.total_memory_gb,
        total_object_store_memory_gb=totals.total_object_store_memory_gb,
        library_usages=tuple(sorted(set(provider.library_usages))) if provider else (),
        extra_usage_tags=tags,
        total_num_nodes=_prefer(
            provider.total_num_nodes if provider else None, totals.total_num_nodes
        ),
        total_num_running_jobs=_prefer(
            provider.total_num_running_jobs if provider else None, running_jobs
        ),
        libc_version=md.libc_version if md else None,
        hardware_usages=tuple(sorted(set(provider.hardware_usages))) if provider else (),
    )


# Ray says "unknown" for a head without a cluster config only since it began asking cloud
# metadata services (measured: 2.60.0 does; 2.9.3 to 2.47.1 report null).
_UNKNOWN_CLOUD_SINCE = (2, 48)


def _cloud_provider(found: str | None, ray_version: str | None) -> str | None:
    if found != "unknown" or ray_version is None:
        return found
    try:
        major, minor = (int(part) for part in ray_version.split(".")[:2])
    except ValueError:
        return found
    return found if (major, minor) >= _UNKNOWN_CLOUD_SINCE else None


def _prefer(exact: int | None, fallback: int | None) -> int | None:
    return exact if exact is not None else fallback


# ---------------------------------------------------------------------------
# The schema, as JSON Schema (published in docs/) and as the check run before sending,
# derived from the declaration of each field (contract/fields.py).

_TYPES: dict[Json, dict[str, Any]] = {
    Json.STRING: {"type": "string"},
    Json.INTEGER: {"type": "integer", "minimum": 0},
    Json.NUMBER: {"type": "number", "minimum": 0},
    Json.STRING_LIST: {"type": "array", "items": {"type": "string"}},
    Json.STRING_MAP: {"type": "object", "additionalProperties": {"type": "string"}},
}


def _schema_of(field: Field) -> dict[str, Any]:
    if field.const is not None:
        return {"const": field.const}
    schema = dict(_TYPES[field.json])
    return {"anyOf": [schema, {"type": "null"}]} if field.nullable else schema


_FIELD_SCHEMAS: dict[str, dict[str, Any]] = {f.name: _schema_of(f) for f in FIELDS}

REPORT_JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Ray usage stats report, schema_version 0.1",
    "type": "object",
    "required": list(REPORT_FIELDS),
    "additionalProperties": False,
    "properties": {name: _FIELD_SCHEMAS[name] for name in REPORT_FIELDS},
}


class SchemaError(ValueError):
    """A report (or a received body) does not match schema 0.1; says which field and why."""


def _matches(value: Any, schema: Mapping[str, Any]) -> bool:
    if "anyOf" in schema:
        return any(_matches(value, option) for option in schema["anyOf"])
    if "const" in schema:
        return bool(value == schema["const"])
    kind = schema["type"]
    if kind == "null":
        return value is None
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if kind == "number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok and math.isfinite(value) and value >= 0
    if kind == "array":
        return isinstance(value, list) and all(_matches(v, schema["items"]) for v in value)
    if kind == "object":
        return isinstance(value, dict) and all(
            isinstance(k, str) and _matches(v, schema["additionalProperties"])
            for k, v in value.items()
        )
    raise AssertionError(f"unknown schema type {kind}")


def _fast_match(field: Field) -> Any:
    """A quick yes for the values most reports carry (the exact type, or null where the
    field allows it); anything else goes to `_matches`, which decides. A collector checks
    every report it receives, so the common case is kept short."""
    plain: type = {
        Json.STRING: str,
        Json.INTEGER: int,
        Json.NUMBER: float,
        Json.STRING_LIST: list,
        Json.STRING_MAP: dict,
    }.get(field.json, type(None))
    nullable = field.nullable and field.const is None
    if field.const is not None:
        return None
    if plain is list:
        return lambda v: (
            (type(v) is list and all(type(i) is str for i in v)) or (nullable and v is None)
        )
    if plain is dict:
        return lambda v: (
            (type(v) is dict and all(type(k) is str and type(i) is str for k, i in v.items()))
            or (nullable and v is None)
        )
    if plain is int:
        return lambda v: (type(v) is int and v >= 0) or (nullable and v is None)
    if plain is float:
        return lambda v: (type(v) is float and 0 <= v < math.inf) or (nullable and v is None)
    return lambda v: type(v) is plain or (nullable and v is None)


_FAST_MATCH = {f.name: _fast_match(f) for f in FIELDS}


def check_schema(body: Mapping[str, Any]) -> None:
    """Raise SchemaError unless `body` has exactly the schema-0.1 keys of its Ray version
    (the keys Ray's own report of that version has, fields.ray_keys) with their types."""
    version = body.get("ray_version")
    expected = ray_keys(version if isinstance(version, str) else None)
    if len(body) != len(expected) or any(name not in body for name in expected):
        missing = [name for name in expected if name not in body]
        extra = sorted(set(body) - set(expected))
        raise SchemaError(f"report keys differ from schema 0.1: missing {missing}, extra {extra}")
    for name in expected:
        value, quick = body[name], _FAST_MATCH[name]
        if not ((quick is not None and quick(value)) or _matches(value, _FIELD_SCHEMAS[name])):
            raise SchemaError(f"report field {name} has a value of the wrong type or range")


def serialise(report: Report) -> bytes:
    """The one serialisation of a report: these bytes are sent, written and kept."""
    body = report.to_json_dict()
    check_schema(body)
    return _encode(body)


def serialise_body(body: Mapping[str, Any]) -> bytes:
    """`serialise` of the report a body holds, made from the body itself: for a body that
    passed check_schema (exactly its Ray version's keys, the types declared) and that
    nothing is to change in. The keys in the order to_json_dict gives them, each value as
    parsed (a list where to_json_dict turns the report's tuple back into one); it spares a
    collector a pass over the report value for each report it takes."""
    return _encode({name: body[name] for name in ray_keys(body.get("ray_version"))})


def _encode(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, allow_nan=False).encode("utf-8")


def local_copy(body: bytes, success: bool, error: str | None) -> bytes:
    """`usage_stats.json` in Ray's shape, embedding the report bytes exactly as sent."""
    tail = json.dumps({"success": success, "error": error})
    return b'{"usage_stats": ' + body + b", " + tail[1:].encode("utf-8") + b"\n"


def nulls_for(names: Sequence[str]) -> dict[str, Any]:
    """Replacement values that blank fields while keeping the report schema-valid."""
    return {name: BY_NAME[name].blank for name in names}
