"""Parsers for what the cluster's sockets and files say: pure, strict, never trusting.

Each parser takes decoded JSON (or YAML) and returns a typed value or raises
`SourceError` naming the source and what was wrong. A wrong type, a negative, NaN or
absurd number is an error here, never a guess.
"""

from __future__ import annotations

import gc
import json
import math
import re
from collections.abc import Mapping
from enum import Enum
from typing import Any

from usagestatsd.contract.report import (
    GIB,
    ClusterConfigFacts,
    ClusterMetadata,
    ProviderFacts,
    ResourceTotals,
)

PROVIDER_PROTOCOL_VERSION = 1
_MAX_COUNT = 10**9
_MAX_RESOURCE = 1e18
_YEAR_2100_MS = 4_102_444_800_000
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class Failure(Enum):
    """What kind of failure a SourceError is, for decisions (its message is only shown)."""

    OTHER = "other"
    ABSENT = "absent"  # the socket file is not there
    NOBODY_LISTENS = "nobody listens"  # the connection was refused (ECONNREFUSED)
    HOLDER_UNSEEN = "holder unseen"  # a listener whose process this user cannot see
    NOT_YET = "not yet"  # the source has nothing yet: ordinary in a session just started


class Asked(Enum):
    """Which source a SourceError came from, for decisions (its `source` words are shown)."""

    OTHER = "other"
    DASHBOARD_METADATA = "dashboard metadata"  # the dashboard's cluster metadata
    DASHBOARD = "dashboard"  # the dashboard's other answers
    PROVIDER = "provider"

    @property
    def dashboard(self) -> bool:
        """Whether the dashboard was asked."""
        return self in (Asked.DASHBOARD_METADATA, Asked.DASHBOARD)


class SourceError(Exception):
    """A cluster source could not be used; `source` names it, the message says why."""

    def __init__(
        self,
        source: str,
        problem: str,
        failure: Failure = Failure.OTHER,
        asked: Asked = Asked.OTHER,
    ) -> None:
        self.source = source
        self.problem = problem
        self.failure = failure
        self.asked = asked  # set by whoever asked (cluster.gather), where it knows
        super().__init__(f"{source}: {problem}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_cost(body: bytes) -> int:
    """An upper bound on the memory (bytes) decoding `body` takes, counted at C speed.

    Each object starts with `{` (up to ~360 bytes decoded, measured in the daemon), each
    array with `[`, every value after the first in a container follows a `,` and every key
    precedes a `:` (each up to ~64 bytes: a slot and a small value). Counting those bytes
    inside strings too only overstates the cost. Checked on the costliest shapes (`[{},...]`,
    `[{"a":1},...]`, short strings, big numbers): docs/security.md.
    """
    return 360 * body.count(b"{") + 64 * (body.count(b"[") + body.count(b",") + body.count(b":"))


def decode_json(source: str, body: bytes, max_cost: int | None = None) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity, bounded nesting and cost; errors name the source.

    With `max_cost`, a body whose decode could take more memory than that is refused
    before decoding starts.
    """
    if max_cost is not None and decode_cost(body) > max_cost:
        raise SourceError(
            source, f"reply would take more than {max_cost >> 20} MiB to decode (too many values)"
        )
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except RecursionError:
        raise SourceError(source, "JSON nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise SourceError(source, f"invalid JSON ({str(exc)[:120]})") from None
    finally:
        if was_enabled:
            gc.enable()


def _unwrap(source: str, doc: Any) -> Mapping[str, Any]:
    """The `data` of a dashboard reply `{"result": true, "msg": ..., "data": {...}}`."""
    if not isinstance(doc, dict):
        raise SourceError(source, "reply is not a JSON object")
    if doc.get("result") is not True:
        raise SourceError(source, "reply says the request failed")
    data = doc.get("data")
    if not isinstance(data, dict):
        raise SourceError(source, "reply has no data object")
    return data


def _opt_str(source: str, data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 256:
        raise SourceError(source, f"{key} is not a short string")
    return value


def _count(source: str, value: Any, what: str, limit: float = _MAX_COUNT) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SourceError(source, f"{what} is not a number")
    if not math.isfinite(value) or value < 0 or value > limit or value != int(value):
        raise SourceError(source, f"{what} is not a whole number in range")
    return int(value)


def parse_cluster_metadata(doc: Any) -> ClusterMetadata:
    """`GET /api/v0/cluster_metadata` from dash_ReportHead."""
    source = "dash_ReportHead /api/v0/cluster_metadata"
    return metadata_of(source, _unwrap(source, doc))


def metadata_of(source: str, data: Mapping[str, Any]) -> ClusterMetadata:
    """The cluster metadata `ray start` recorded (the dashboard's `data`, or the provider's
    `cluster_metadata` where the dashboard does not serve it: Ray 1.13 to 2.2)."""
    start = data.get("sessionStartTimestampMs")
    start_ms = (
        None if start is None else _count(source, start, "sessionStartTimestampMs", _YEAR_2100_MS)
    )
    init = data.get("rayInitCluster")
    if init is not None and not isinstance(init, bool):
        raise SourceError(source, "rayInitCluster is not a boolean")
    return ClusterMetadata(
        ray_version=_opt_str(source, data, "rayVersion"),
        python_version=_opt_str(source, data, "pythonVersion"),
        git_commit=_opt_str(source, data, "gitCommit"),
        os=_opt_str(source, data, "os"),
        session_start_timestamp_ms=start_ms,
        libc_version=_opt_str(source, data, "libcVersion"),
        ray_init_cluster=init,
        # With usage stats disabled at start Ray records only the version fields.
        usage_stats_enabled=start_ms is not None,
        session_id=_session_uuid(source, data),
    )


def _session_uuid(source: str, data: Mapping[str, Any]) -> str | None:
    """Ray <= 2.20's `sessionId` (a random UUID, what its reports carry); None otherwise."""
    value = _opt_str(source, data, "sessionId")
    return value if value is not None and _UUID.fullmatch(value) else None


def _resource(source: str, resources: Mapping[str, Any], name: str) -> float | None:
    value = resources.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SourceError(source, f"resource {name} is not a number")
    if not math.isfinite(value) or value < 0 or value > _MAX_RESOURCE:
        raise SourceError(source, f"resource {name} is out of range")
    return float(value)


def _usage_total(source: str, usage: Mapping[str, Any], name: str) -> float | None:
    pair = usage.get(name)
    if pair is None:
        return None
    if not isinstance(pair, list) or len(pair) != 2:
        raise SourceError(source, f"usage of {name} is not a [used, total] pair")
    return _resource(source, {name: pair[1]}, name)


def _node_count(source: str, load: Mapping[str, Any], report: Any) -> int | None:
    by_node = load.get("usageByNode")
    if isinstance(by_node, dict):
        return len(by_node)
    if not isinstance(report, dict):
        return None
    count = 0
    for key in ("activeNodes", "idleNodes"):
        group = report.get(key) or {}
        if not isinstance(group, dict):
            raise SourceError(source, f"autoscalerReport.{key} is not an object")
        count += sum(_count(source, v, key) for v in group.values())
    return count


def parse_cluster_status(doc: Any) -> ResourceTotals:
    """`GET /api/cluster_status` from dash_ReportHead: totals over the cluster's live nodes.

    Chosen over the state API's node list because listing nodes makes Ray record a usage
    tag (core_state_api_list_nodes) in the cluster: usagestatsd must change nothing there.
    """
    source = "dash_ReportHead /api/cluster_status"
    data = _unwrap(source, doc)
    status = data.get("clusterStatus")
    load = status.get("loadMetricsReport") if isinstance(status, dict) else None
    if not isinstance(load, dict) or not isinstance(load.get("usage"), dict):
        raise SourceError(source, "no loadMetricsReport.usage in the reply")
    usage = load["usage"]
    if not usage:
        raise SourceError(
            source, "no resource usage yet (the autoscaler has not reported)", Failure.NOT_YET
        )
    cpus = _usage_total(source, usage, "CPU")
    gpus = _usage_total(source, usage, "GPU")
    mem = _usage_total(source, usage, "memory")
    store = _usage_total(source, usage, "objectStoreMemory")
    assert isinstance(status, dict)
    return ResourceTotals(
        total_num_nodes=_node_count(source, load, status.get("autoscalerReport")),
        total_num_cpus=int(cpus) if cpus is not None else None,
        total_num_gpus=int(gpus) if gpus is not None else None,
        total_memory_gb=mem / GIB if mem is not None else None,
        total_object_store_memory_gb=store / GIB if store is not None else None,
    )


def parse_job_list(doc: Any) -> int:
    """`GET /api/jobs/` from dash_JobHead: RUNNING jobs, counted the way Ray counts them.

    Ray counts live jobs in the GCS job table. A submission whose entrypoint has not
    (yet) started a driver is RUNNING in this list with job_id null, and Ray does not
    count it: so only RUNNING entries with a job_id count (measured on Ray 2.60).
    """
    source = "dash_JobHead /api/jobs/"
    if isinstance(doc, dict) and all(isinstance(job, dict) for job in doc.values()):
        # Ray 1.13: {submission id: job info}, without job_id (its reports have no running
        # jobs field: counting only keeps the source readable, without a warning).
        doc = [{"job_id": key, **job} for key, job in doc.items()]
    if not isinstance(doc, list):
        raise SourceError(source, "reply is not a JSON array (nor Ray 1.13's object of jobs)")
    running = 0
    for job in doc:
        if not isinstance(job, dict) or not isinstance(job.get("status"), str):
            raise SourceError(source, "a job entry has no status")
        if job["status"] == "RUNNING" and job.get("job_id") is not None:
            running += 1
    return running


def _str_list(source: str, value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SourceError(source, f"{what} is not a list of strings")
    if len(value) > 1000:
        raise SourceError(source, f"{what} has more than 1000 entries")
    return tuple(value)


def _camel(stored: Mapping[str, Any]) -> dict[str, Any]:
    """The GCS keeps the metadata in snake_case (`ray_version`); the dashboard of Ray 2.3+
    answers it in camelCase (`rayVersion`), the spelling `metadata_of` reads."""
    out = dict(stored)
    for key, value in stored.items():
        head, *rest = key.split("_")
        out.setdefault(head + "".join(word.capitalize() for word in rest), value)
    return out


def parse_provider(doc: Any) -> ProviderFacts:
    """`GET /v1/usage` from the usagestatsd provider socket (docs/provider-protocol.md)."""
    source = "usagestatsd_provider /v1/usage"
    if not isinstance(doc, dict):
        raise SourceError(source, "reply is not a JSON object")
    version = doc.get("protocol_version")
    if version != PROVIDER_PROTOCOL_VERSION:
        raise SourceError(
            source, f"protocol_version {version!r} not understood (this daemon speaks 1)"
        )
    cluster_id = doc.get("cluster_id")
    if cluster_id is not None and not isinstance(cluster_id, str):
        raise SourceError(source, "cluster_id is not a string")
    tags = doc.get("extra_usage_tags")
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise SourceError(source, "extra_usage_tags is not an object of strings")
    if len(tags) > 1000:
        raise SourceError(source, "extra_usage_tags has more than 1000 entries")
    nodes, jobs = doc.get("total_num_nodes"), doc.get("total_num_running_jobs")
    metadata = doc.get("cluster_metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise SourceError(source, "cluster_metadata is not an object")
    return ProviderFacts(
        cluster_id=cluster_id,
        library_usages=_str_list(source, doc.get("library_usages"), "library_usages"),
        extra_usage_tags=dict(tags),
        hardware_usages=_str_list(source, doc.get("hardware_usages"), "hardware_usages"),
        total_num_nodes=None if nodes is None else _count(source, nodes, "total_num_nodes"),
        total_num_running_jobs=None if jobs is None else _count(source, jobs, "running jobs"),
        cluster_metadata=None if metadata is None else metadata_of(source, _camel(metadata)),
    )


def _instance_type(node_config: Any) -> str | None:
    if not isinstance(node_config, dict):
        return None
    inner = node_config.get("node_config")
    if not isinstance(inner, dict):
        return None
    for key in ("InstanceType", "machineType", "instance_type"):
        if isinstance(inner.get(key), str):
            return str(inner[key])
    arm = inner.get("azure_arm_parameters")
    if isinstance(arm, dict) and isinstance(arm.get("vmSize"), str):
        return str(arm["vmSize"])
    return None


def _opt_count(source: str, config: Mapping[str, Any], key: str) -> int | None:
    return None if config.get(key) is None else _count(source, config[key], key)


def parse_cluster_config(doc: Any) -> ClusterConfigFacts:
    """The autoscaler's cluster config (YAML already decoded safely): provider and node types."""
    source = "cluster config file"
    if not isinstance(doc, dict):
        raise SourceError(source, "not a mapping at top level")
    provider = doc.get("provider")
    cloud = provider.get("type") if isinstance(provider, dict) else None
    if cloud is not None and not isinstance(cloud, str):
        raise SourceError(source, "provider.type is not a string")
    head_type = worker_types = None
    node_types = doc.get("available_node_types")
    head_name = doc.get("head_node_type")
    if isinstance(node_types, dict) and isinstance(head_name, str):
        workers: list[str] = []
        for name, node_config in node_types.items():
            kind = _instance_type(node_config)
            if name == head_name:
                head_type = kind
            elif kind is not None:
                workers.append(kind)
        worker_types = tuple(workers)
    return ClusterConfigFacts(
        cloud_provider=cloud.lower() if cloud else None,
        min_workers=_opt_count(source, doc, "min_workers"),
        max_workers=_opt_count(source, doc, "max_workers"),
        head_node_instance_type=head_type,
        worker_node_instance_types=worker_types,
    )
