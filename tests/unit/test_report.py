"""The report: Ray's exact keys, order and types; built from the recorded cluster."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.rayside import recorded_json
from usagestatsd.contract.report import (
    REPORT_FIELDS,
    ClusterConfigFacts,
    Counters,
    ProviderFacts,
    SchemaError,
    build_report,
    check_schema,
    local_copy,
    serialise,
)
from usagestatsd.facts.sources import parse_cluster_metadata, parse_cluster_status, parse_job_list


def recorded_report(**overrides: Any) -> Any:
    """A report built from the recorded Ray 2.60 dashboard responses."""
    args: dict[str, Any] = dict(
        source="OSS",
        now_ms=1795823481178,
        counters=Counters(4, 4, 0),
        session_id="1c4945d0f5bd56675908afac3a1bf236b34c2c2f2643f2e43079b661",
        metadata=parse_cluster_metadata(recorded_json("dash_report_cluster_metadata.json")),
        totals=parse_cluster_status(recorded_json("dash_report_cluster_status.json")),
        running_jobs=parse_job_list(recorded_json("dash_job_list.json")),
        config=ClusterConfigFacts(cloud_provider="unknown"),
        provider=ProviderFacts(
            cluster_id=None,
            library_usages=(),
            extra_usage_tags=recorded_json("report_payload.json")["extra_usage_tags"],
            hardware_usages=("AMD EPYC",),
        ),
        extra_tags={},
    )
    args.update(overrides)
    return build_report(**args)


def test_ray_payload_matches_our_schema() -> None:
    """The body Ray 2.60 really sent passes our schema check, so ours is Ray's schema."""
    check_schema(recorded_json("report_payload.json"))


def test_key_order_is_rays() -> None:
    """Our field order is the order of Ray's real body."""
    assert list(recorded_json("report_payload.json")) == list(REPORT_FIELDS)


def test_recorded_cluster_builds_rays_report() -> None:
    """From the recorded dashboard responses we build exactly the report Ray sent."""
    ours = json.loads(serialise(recorded_report()))
    assert ours == recorded_json("report_payload.json")


def test_counters_are_the_values_before_the_attempt() -> None:
    """seq_number counts attempts before this one; totals count their outcomes."""
    c = Counters().after(True).after(False).after(True)
    assert (c.seq_number, c.total_success, c.total_failed) == (3, 2, 1)


@pytest.mark.parametrize(
    "change",
    [
        {"total_num_cpus": -1},
        {"total_memory_gb": float("nan")},
        {"library_usages": ["ok", 3]},
        {"extra_usage_tags": {"k": 1}},
        {"session_id": None},
    ],
)
def test_schema_rejects_wrong_types(change: dict[str, Any]) -> None:
    """A body with a wrong type or range fails the schema check, naming the field."""
    body = dict(recorded_json("report_payload.json"))
    body.update(change)
    with pytest.raises(SchemaError, match=next(iter(change))):
        check_schema(body)


def test_schema_rejects_missing_and_extra_keys() -> None:
    """Keys must be exactly schema 0.1's."""
    body = dict(recorded_json("report_payload.json"))
    body["hostname"] = "vm"
    del body["os"]
    with pytest.raises(SchemaError, match="missing"):
        check_schema(body)


def test_local_copy_embeds_the_exact_bytes() -> None:
    """usage_stats.json has Ray's shape and carries the sent bytes unchanged."""
    body = serialise(recorded_report())
    copy = local_copy(body, False, "http://x/: HTTP 503")
    assert body in copy
    decoded = json.loads(copy)
    assert set(decoded) == {"usage_stats", "success", "error"}
    assert decoded["success"] is False
    assert decoded["usage_stats"] == json.loads(body)
