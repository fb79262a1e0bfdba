"""A Ray version the daemon cannot report is named everywhere, and setup does not route it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from tests.unit.test_refusal import facts, metadata
from tests.unit.test_report import recorded_report
from tests.unit.test_setup import INTAKE, found, head_as
from usagestatsd.contract.guard import KnownIdentifiers, guard
from usagestatsd.contract.ray_support import unsupported
from usagestatsd.cycle.refusal import RefusalKind, cluster_refusal
from usagestatsd.facts.sources import parse_job_list, parse_provider
from usagestatsd.setup.remedies import plan


@pytest.mark.parametrize(
    ("version", "metadata_known", "named"),
    [
        ("1.12.1", True, "Ray 1.12 is not supported: Ray collects usage stats from 1.13 on"),
        ("0.8.7", False, "Ray 0.8 is not supported"),
        ("2.2.0", False, "Ray 2.2 is not supported without the usagestatsd provider"),
        ("1.13.0", False, "Ray 1.13 is not supported without the usagestatsd provider"),
        ("2.2.0", True, None),
        ("1.13.0", True, None),
        ("2.3.0", False, None),  # its dashboard serves the metadata: an ordinary failure
        ("2.60.0", True, None),
        (None, False, None),
    ],
)
def test_which_versions_are_named(version: str | None, metadata_known: bool, named: str) -> None:
    why = unsupported(version, metadata_known)
    assert why == named if named is None else why is not None and why.startswith(named)


def test_the_refusal_names_the_version_from_the_dashboard_process() -> None:
    """No metadata (1.12 has none): the version the dashboard's install says is named."""
    old = facts(running=True)
    assert old.origins is not None
    old = replace(old, origins=replace(old.origins, ray_version="1.12.1"))
    refusal = cluster_refusal(old)
    assert refusal is not None and refusal.kind is RefusalKind.UNSUPPORTED
    assert refusal.level == "warning" and refusal.message.startswith("Ray 1.12 is not supported")
    assert not refusal.kind.source_warnings  # one warning, not one per failing socket


def test_a_served_version_is_not_refused_for_its_version() -> None:
    assert cluster_refusal(facts(metadata=metadata())) is None


@pytest.mark.parametrize(
    ("version", "provider_problem"), [("1.12.1", None), ("2.2.0", "socket is absent")]
)
def test_setup_does_not_route_what_cannot_be_reported(
    version: str, provider_problem: str | None
) -> None:
    head = head_as(version=version, environ={})
    result = plan(found(head, provider_problem=provider_problem))
    assert not result.ray_files and not result.ray_commands
    assert any("is not supported" in m and "not routed" in m for m in result.missing)
    assert not any(INTAKE in m for m in result.missing)


def test_setup_routes_ray_2_2_when_the_provider_serves() -> None:
    head = head_as(version="2.2.0", environ={})
    result = plan(found(head))
    assert result.ray_files and not any("is not supported" in m for m in result.missing)


def test_ray_1_13_job_object_is_read() -> None:
    """1.13's /api/jobs/ is an object keyed by submission id, not a list."""
    doc = {"raysubmit_a": {"status": "RUNNING"}, "raysubmit_b": {"status": "SUCCEEDED"}}
    assert parse_job_list(doc) == 1


def test_the_providers_metadata_is_read_in_the_gcs_spelling() -> None:
    """The GCS keeps snake_case keys; read as the dashboard's camelCase ones."""
    doc: dict[str, Any] = {
        "protocol_version": 1,
        "cluster_id": None,
        "library_usages": [],
        "extra_usage_tags": {},
        "hardware_usages": [],
        "cluster_metadata": {
            "ray_version": "2.2.0",
            "session_id": "a327bfe0-9ecf-4e63-a7f8-04f774cf532f",
            "session_start_timestamp_ms": 5,
        },
    }
    md = parse_provider(doc).cluster_metadata
    assert md is not None and md.ray_version == "2.2.0" and md.usage_stats_enabled
    assert md.session_id == "a327bfe0-9ecf-4e63-a7f8-04f774cf532f"
    without = parse_provider({**doc, "cluster_metadata": None}).cluster_metadata
    assert without is None


def test_a_metadata_uuid_with_digit_runs_is_a_session_id() -> None:
    """Ray <= 2.20's session UUID (1.13 included) whose digits look like an IPv4 address or
    an AWS account id is still the session id: before, every cycle of that session crashed."""
    for uuid in ("39836106-38bf-4fc4-a1ee-43dd68f82c82", "0f3c2b1a-1d2e-4c5b-9a8f-123456789012"):
        report = recorded_report().with_fields(session_id=uuid)
        clean, redactions = guard(report, KnownIdentifiers())
        assert clean.session_id == uuid and redactions == []
