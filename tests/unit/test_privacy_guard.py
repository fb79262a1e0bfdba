"""The privacy guard: identifiers are removed and named by field, legitimate values kept."""

from __future__ import annotations

import json

import pytest

from tests.unit.test_report import recorded_report
from usagestatsd.contract.guard import KnownIdentifiers, guard, identifying_reason
from usagestatsd.contract.report import ClusterConfigFacts, ProviderFacts, serialise

KNOWN = KnownIdentifiers.of(["vm.example.internal"], ["alice"], ["/home/alice"])


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("192.0.2.2", "IPv4"),
        ("ip-10-0-0-12", "IPv4"),
        ("fe80::1ff:fe23:4567:890a", "IPv6"),
        ("2001:db8::1", "IPv6"),
        ("00:1a:2b:3c:4d:5e", "MAC"),
        ("alice@example.com", "e-mail"),
        ("/home/alice/project", "path"),
        ("~/secrets", "path"),
        ("node-7.cluster.example.com", "host name"),
        ("vm", "host name"),
        ("alice", "user name"),
        ("https://intranet/", "URL"),
        # Forms that passed the guard before.
        ("123456789012", "AWS account"),
        ("arn:aws:iam::123456789012:user/ops", "ARN"),
        ("AKIAIOSFODNN7EXAMPLE", "AWS access key"),
        ("password=hunter2", "secret"),
        ("api_key: 5f3a", "secret"),
        ("001a.2b3c.4d5e", "MAC"),
        ("167772161", "IPv4"),
        ("0x0a000001", "IPv4"),
        ("10.1", "IPv4"),
        ("192.168.1", "IPv4"),
        ("db7.prod.acme.corpnet", "host name"),
        ("DB7.PROD.ACME.CORPNET", "host name"),
    ],
)
def test_identifiers_are_recognised(value: str, reason: str) -> None:
    """Addresses, paths, host and user names are all recognised as identifying."""
    found = identifying_reason(value, KNOWN)
    assert found is not None and reason in found


@pytest.mark.parametrize(
    "value",
    [
        "2.60.0",
        "3.11.2",
        "glibc:2.36",
        "m5.xlarge",
        "n1-standard-4",
        "Standard_D2s_v3",
        "util.multiprocessing.Pool",
        "AMD EPYC",
        "False",
        "memory",
        "Tuner.fit",
        "linux",
        "ml.g5.xlarge",
        "util.ActorPool",
        "0.5",
        "3.11",
        "16777215",
        "Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz",
        "b7f4259e944bf6959f721b106adc366ddfa0c356",
    ],
)
def test_legitimate_values_pass(value: str) -> None:
    """Versions, instance types, library names and tag values are not flagged."""
    assert identifying_reason(value, KNOWN) is None


def test_hostile_cluster_values_are_removed_and_named() -> None:
    """Identifiers planted in every string field are nulled or dropped, each field named."""
    report = recorded_report(
        metadata=None,
        config=ClusterConfigFacts("aws", 1, 2, "vm", ("m5.large", "10.1.2.3")),
        provider=ProviderFacts(
            cluster_id=None,
            library_usages=("tune", "/home/alice/lib"),
            extra_usage_tags={
                "num_drivers": "1",
                "gcs_storage": "alice@example.com",
                "10.0.0.1": "x",
                "air_trainer": "Alice Smith",
                "password": "x",
            },
            hardware_usages=("AMD EPYC", "00:1a:2b:3c:4d:5e"),
        ),
        extra_tags={},
    ).with_fields(ray_version="2.60.0-vm.example.internal", os="alice")
    clean, redactions = guard(report, KNOWN)
    body = serialise(clean).decode()
    for planted in ("vm", "alice", "10.1.2.3", "10.0.0.1", "00:1a", "/home"):
        assert planted not in json.loads(body).values()
        assert planted not in body.replace("vm.example", "")
    fields = {r.field for r in redactions}
    assert {
        "ray_version",
        "os",
        "head_node_instance_type",
        "worker_node_instance_types",
        "library_usages",
        "hardware_usages",
        "extra_usage_tags.gcs_storage",
        "extra_usage_tags.air_trainer",
    } <= fields
    assert any(f.startswith("extra_usage_tags[#") for f in fields)
    assert clean.library_usages == ("tune",)
    assert clean.extra_usage_tags == {"num_drivers": "1"}
    assert all("alice" not in r.reason and "10." not in r.reason for r in redactions)


def test_absurd_numbers_are_nulled() -> None:
    """Negative or impossible counts are nulled with the field named."""
    report = recorded_report().with_fields(total_num_cpus=-3, total_memory_gb=float("inf"))
    clean, redactions = guard(report, KNOWN)
    assert clean.total_num_cpus is None and clean.total_memory_gb is None
    assert {r.field for r in redactions} == {"total_num_cpus", "total_memory_gb"}


@pytest.mark.parametrize(
    ("field", "value"),
    [("ray_version", "2.60.0\n"), ("os", "linux\n"), ("git_commit", "b7f4259e\n")],
)
def test_shapes_match_the_whole_string(field: str, value: str) -> None:
    """A trailing newline no longer slips past a `$` anchor."""
    clean, redactions = guard(recorded_report().with_fields(**{field: value}), KNOWN)
    assert getattr(clean, field) is None and [r.field for r in redactions] == [field]


def test_large_ray_counts_are_not_addresses() -> None:
    """A count over 2**24 under one of Ray's counting tags is kept; elsewhere it is dropped."""
    tags = {"num_normal_tasks": "167772161", "gcs_storage": "167772161"}
    report = recorded_report(provider=ProviderFacts(None, (), tags, ()), extra_tags={})
    clean, _ = guard(report, KNOWN)
    assert clean.extra_usage_tags == {"num_normal_tasks": "167772161"}
