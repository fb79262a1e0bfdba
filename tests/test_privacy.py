"""The privacy guard: identifiers are removed and named by field, legitimate values kept."""

from __future__ import annotations

import json

import pytest

from tests.test_report import recorded_report
from usagestatsd.privacy import KnownIdentifiers, guard, identifying_reason
from usagestatsd.report import ClusterConfigFacts, ProviderFacts, serialise

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
            extra_usage_tags={"ok": "1", "owner": "alice@example.com", "10.0.0.1": "x"},
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
        "extra_usage_tags.owner",
    } <= fields
    assert any(f.startswith("extra_usage_tags[#") for f in fields)
    assert clean.library_usages == ("tune",)
    assert clean.extra_usage_tags == {"ok": "1"}
    assert all("alice" not in r.reason and "10." not in r.reason for r in redactions)


def test_absurd_numbers_are_nulled() -> None:
    """Negative or impossible counts are nulled with the field named."""
    report = recorded_report().with_fields(total_num_cpus=-3, total_memory_gb=float("inf"))
    clean, redactions = guard(report, KNOWN)
    assert clean.total_num_cpus is None and clean.total_memory_gb is None
    assert {r.field for r in redactions} == {"total_num_cpus", "total_memory_gb"}
