"""Parsers of cluster replies: the recorded data maps right; bad data is a named error."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import recorded_json
from usagestatsd.sources import (
    SourceError,
    decode_json,
    parse_cluster_config,
    parse_cluster_metadata,
    parse_job_list,
    parse_provider,
    parse_state_nodes,
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


def test_recorded_state_nodes_totals() -> None:
    """CPU, memory and object store totals over ALIVE nodes, in Ray's units."""
    totals = parse_state_nodes(recorded_json("dash_state_nodes.json"))
    assert totals.total_num_nodes == 1
    assert totals.total_num_cpus == 2
    assert totals.total_num_gpus is None
    assert totals.total_memory_gb == pytest.approx(16.16801223810762)
    assert totals.total_object_store_memory_gb == pytest.approx(6.929148101247847)


def test_dead_nodes_do_not_count() -> None:
    """Only ALIVE nodes contribute to the totals."""
    doc = recorded_json("dash_state_nodes.json")
    node = dict(doc["data"]["result"]["result"][0], state="DEAD")
    doc["data"]["result"]["result"].append(node)
    doc["data"]["result"]["total"] = 2
    totals = parse_state_nodes(doc)
    assert (totals.total_num_nodes, totals.total_num_cpus) == (1, 2)


def test_truncated_node_list_is_an_error() -> None:
    """A node list shorter than the total would undercount: refuse it, say why."""
    doc = recorded_json("dash_state_nodes.json")
    doc["data"]["result"]["total"] = 20000
    with pytest.raises(SourceError, match="truncated"):
        parse_state_nodes(doc)


def test_running_jobs_counted() -> None:
    """Jobs whose status is RUNNING are counted; others are not."""
    jobs = [{"status": "RUNNING"}, {"status": "SUCCEEDED"}, {"status": "RUNNING"}]
    assert parse_job_list(jobs) == 2
    assert parse_job_list(recorded_json("dash_job_list.json")) == 0


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
        (parse_state_nodes, {"result": True, "data": {"result": {"result": "x"}}}, "node list"),
        (
            parse_state_nodes,
            {
                "result": True,
                "data": {
                    "result": {"result": [{"state": "ALIVE", "resources_total": {"CPU": -2}}]}
                },
            },
            "CPU",
        ),
        (
            parse_state_nodes,
            {
                "result": True,
                "data": {
                    "result": {"result": [{"state": "ALIVE", "resources_total": {"CPU": "2"}}]}
                },
            },
            "CPU",
        ),
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
