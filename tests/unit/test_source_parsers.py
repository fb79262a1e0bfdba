"""Parsers of cluster replies: the recorded data maps right; bad data is a named error."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.rayside import recorded_json
from usagestatsd.facts.sources import (
    SourceError,
    decode_json,
    parse_cluster_config,
    parse_cluster_metadata,
    parse_cluster_status,
    parse_job_list,
    parse_provider,
)


def test_recorded_metadata_fields() -> None:
    """Versions, commit, os, libc and start time come from cluster_metadata."""
    md = parse_cluster_metadata(recorded_json("dash_report_cluster_metadata.json"))
    assert md.ray_version == "2.60.0"
    assert md.python_version == "3.11.2"
    assert md.git_commit == "b7f4259e944bf6959f721b106adc366ddfa0c356"
    assert md.os == "linux"
    assert md.libc_version == "glibc:2.36"
    assert md.session_start_timestamp_ms == 1795823459121
    assert md.usage_stats_enabled is True
    assert md.ray_init_cluster is False


def test_metadata_of_cluster_started_with_usage_stats_disabled() -> None:
    """Ray keeps only the version fields when usage stats were disabled at start."""
    doc = {
        "result": True,
        "msg": "",
        "data": {"rayVersion": "2.60.0", "pythonVersion": "3.11.2", "rayInitCluster": False},
    }
    assert parse_cluster_metadata(doc).usage_stats_enabled is False


def test_recorded_cluster_status_totals() -> None:
    """CPU, memory, object store totals and live nodes from cluster_status, in Ray's units."""
    totals = parse_cluster_status(recorded_json("dash_report_cluster_status.json"))
    assert totals.total_num_nodes == 1
    assert totals.total_num_cpus == 2
    assert totals.total_num_gpus is None
    assert totals.total_memory_gb == pytest.approx(16.16801223810762)
    assert totals.total_object_store_memory_gb == pytest.approx(6.929148101247847)


def test_cluster_status_before_first_autoscaler_update() -> None:
    """Right after start Ray's usage is empty: a named problem, not zeros."""
    doc = recorded_json("dash_report_cluster_status.json")
    doc["data"]["clusterStatus"]["loadMetricsReport"]["usage"] = {}
    with pytest.raises(SourceError, match="not reported"):
        parse_cluster_status(doc)


def test_node_count_without_usage_by_node() -> None:
    """Without usageByNode, live nodes are the autoscaler's active plus idle nodes."""
    doc = recorded_json("dash_report_cluster_status.json")
    del doc["data"]["clusterStatus"]["loadMetricsReport"]["usageByNode"]
    doc["data"]["clusterStatus"]["autoscalerReport"]["idleNodes"] = {"w": 2}
    assert parse_cluster_status(doc).total_num_nodes == 3


def test_running_jobs_counted() -> None:
    """Jobs whose status is RUNNING are counted; others are not."""
    jobs = [
        {"status": "RUNNING", "job_id": "02000000"},
        {"status": "SUCCEEDED", "job_id": "03000000"},
        {"status": "RUNNING", "job_id": "04000000"},
        {"status": "RUNNING", "job_id": None},  # a submission that has no driver yet
    ]
    assert parse_job_list(jobs) == 2
    assert parse_job_list(recorded_json("dash_job_list.json")) == 0


def status_with(usage: dict[str, Any]) -> dict[str, Any]:
    """A cluster_status reply whose usage is `usage`."""
    return {"result": True, "data": {"clusterStatus": {"loadMetricsReport": {"usage": usage}}}}


@pytest.mark.parametrize(
    ("parser", "doc", "problem"),
    [
        (parse_cluster_metadata, [], "not a JSON object"),
        (parse_cluster_metadata, {"result": False, "data": {}}, "failed"),
        (parse_cluster_metadata, {"result": True, "data": {"rayVersion": 5}}, "rayVersion"),
        (
            parse_cluster_metadata,
            {"result": True, "data": {"sessionStartTimestampMs": -5}},
            "sessionStart",
        ),
        (
            parse_cluster_metadata,
            {"result": True, "data": {"sessionStartTimestampMs": 10**30}},
            "sessionStart",
        ),
        (parse_cluster_status, {"result": True, "data": {"clusterStatus": 5}}, "usage"),
        (parse_cluster_status, status_with({"CPU": [0, -2]}), "CPU"),
        (parse_cluster_status, status_with({"CPU": "2"}), "CPU"),
        (parse_cluster_status, status_with({"CPU": [0, 1e300]}), "CPU"),
        (parse_cluster_status, status_with({"GPU": [1]}), "GPU"),
        (parse_job_list, {"jobs": []}, "array"),
        (parse_job_list, [{"status": 3}], "status"),
        (parse_provider, {"protocol_version": 2}, "protocol_version 2"),
        (parse_provider, {"protocol_version": 1, "cluster_id": 5}, "cluster_id"),
        (parse_cluster_config, ["a"], "mapping"),
        (parse_cluster_config, {"min_workers": -1}, "min_workers"),
    ],
)
def test_bad_replies_are_named_errors(parser: Any, doc: Any, problem: str) -> None:
    """Wrong shapes, types and ranges raise SourceError naming the source and the field."""
    with pytest.raises(SourceError, match=problem) as info:
        parser(doc)
    assert info.value.source


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{not json", "invalid JSON"),
        (b'{"a": NaN}', "invalid JSON"),
        (b'{"a": Infinity}', "invalid JSON"),
        (b"\xff\xfe", "invalid JSON"),
        (b"[" * 100000 + b"]" * 100000, "nested"),
    ],
)
def test_decode_json_is_strict(body: bytes, problem: str) -> None:
    """Garbage, NaN/Infinity, bad UTF-8 and deep nesting are named errors."""
    with pytest.raises(SourceError, match=problem):
        decode_json("sock /path", body)


def test_cluster_config_aws() -> None:
    """Provider, worker bounds and instance types come from an autoscaler config."""
    doc = {
        "provider": {"type": "aws", "region": "us-west-2"},
        "min_workers": 0,
        "max_workers": 10,
        "head_node_type": "head",
        "available_node_types": {
            "head": {"node_config": {"InstanceType": "m5.xlarge"}},
            "gpu": {"node_config": {"InstanceType": "g4dn.xlarge"}},
        },
    }
    facts = parse_cluster_config(doc)
    assert facts.cloud_provider == "aws"
    assert (facts.min_workers, facts.max_workers) == (0, 10)
    assert facts.head_node_instance_type == "m5.xlarge"
    assert facts.worker_node_instance_types == ("g4dn.xlarge",)
