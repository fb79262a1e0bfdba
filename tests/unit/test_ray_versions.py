"""Every Ray version's recorded replies (tests/data/ray-*/, tests/ray/record.py), without Ray.

For each version: the dashboard's replies and the provider's are parsed as the daemon
parses them, a report is built, and it is compared with the report Ray's own reporter
sent from that same head a moment apart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.journey.compare import failed, field_checks
from usagestatsd.contract.fields import ray_keys
from usagestatsd.contract.guard import KnownIdentifiers, guard
from usagestatsd.contract.report import ClusterConfigFacts, Counters, build_report
from usagestatsd.cycle.pipeline import choose_session_id
from usagestatsd.facts.cluster import ClusterFacts
from usagestatsd.facts.sources import (
    parse_cluster_metadata,
    parse_cluster_status,
    parse_job_list,
    parse_provider,
)
from usagestatsd.store.state import SessionState

DATA = Path(__file__).resolve().parents[1] / "data"
VERSIONS = sorted(
    (p.name.removeprefix("ray-") for p in DATA.glob("ray-*")),
    key=lambda v: tuple(int(x) for x in v.split(".")),
)


def recorded(version: str, name: str) -> Any:
    """One recorded reply of `version`."""
    return json.loads((DATA / f"ray-{version}" / name).read_text())


def ours(version: str) -> dict[str, Any]:
    """The report usagestatsd builds from that version's recorded replies."""
    provider = parse_provider(recorded(version, "provider_usage.json"))
    metadata_doc = recorded(version, "dash_report_cluster_metadata.json")
    if "recorded_error" in metadata_doc:  # no such path before Ray 2.3: the provider's, as
        metadata = provider.cluster_metadata  # cluster.gather takes it
    else:
        metadata = parse_cluster_metadata(metadata_doc)
    totals = parse_cluster_status(recorded(version, "dash_report_cluster_status.json"))
    jobs = parse_job_list(recorded(version, "dash_job_list.json"))
    facts = ClusterFacts(metadata, totals, jobs, ClusterConfigFacts("unknown"), provider, (), True)
    report = build_report(
        source="OSS",
        now_ms=1,
        counters=Counters(),
        session_id=choose_session_id(facts, SessionState("session", "f" * 32))[0],
        metadata=metadata,
        totals=totals,
        running_jobs=jobs,
        config=facts.config,
        provider=provider,
        extra_tags={},
    )
    clean, redactions = guard(report, KnownIdentifiers.of({"vm"}, set(), set()))
    assert redactions == []
    return clean.to_json_dict()


def test_the_matrix_is_recorded() -> None:
    """Each era is recorded: 1.13 (22 keys), 2.0-2.4 (25), 2.5-2.8 (26), 2.9+ (27)."""
    assert {"1.13.0", "2.0.1", "2.2.0", "2.5.1", "2.8.1", "2.9.3", "2.40.0", "2.60.0"} <= set(
        VERSIONS
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_report_equals_rays_own(version: str) -> None:
    """Full schema 0.1, and equal to Ray's report wherever Ray's own report is the reference."""
    ray, mine = recorded(version, "report_payload.json"), ours(version)
    assert list(mine) == list(ray_keys(version))
    assert set(mine) == set(ray), "Ray's own report of this version has other keys"
    problems = failed(field_checks(mine, ray))
    assert not problems, problems


def test_session_id_follows_each_versions_rule() -> None:
    """Up to 2.20 Ray reports the metadata's UUID; later, the cluster id."""
    assert ours("2.9.3")["session_id"].count("-") == 4
    assert ours("2.20.0")["session_id"].count("-") == 4
    assert len(ours("2.30.0")["session_id"]) == 56
    assert len(ours("2.60.0")["session_id"]) == 56


@pytest.mark.parametrize(
    ("version", "count"),
    [("1.13.0", 22), ("2.0.1", 25), ("2.4.0", 25), ("2.5.1", 26), ("2.8.1", 26), ("2.9.3", 27)],
)
def test_each_rays_key_count(version: str, count: int) -> None:
    """The key count of Ray's own report in each era (from the field declarations)."""
    assert len(ray_keys(version)) == count


def test_an_unknown_version_gets_every_key() -> None:
    """No metadata, or a version string not understood: the newest schema."""
    assert ray_keys(None) == ray_keys("2.60.0") == ray_keys("garbage")
    assert len(ray_keys(None)) == 27
