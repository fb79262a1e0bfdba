"""The bytes the collector keeps are the daemon's own serialisation of the guarded report.

validate builds them directly from the parsed body when the guard removed nothing, and
through the report value when it did; either way they must be what `serialise` gives.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from usagestatsd.collector.validate import Accepted, to_report, validate
from usagestatsd.contract.fields import ray_keys
from usagestatsd.contract.guard import KnownIdentifiers, guard
from usagestatsd.contract.report import check_schema, serialise

DATA = Path(__file__).parents[1] / "data"
RECORDED = sorted(DATA.glob("ray-*/report_payload.json"))


def _received(path: Path) -> dict[str, Any]:
    """A recorded report as a head sends it, with values the guard leaves alone."""
    body: dict[str, Any] = json.loads(path.read_text())
    body["session_id"] = "0123456789abcdef0123456789abcdef"
    if "extra_usage_tags" in body:  # since Ray 2.0
        body["extra_usage_tags"] = {"team_tier": "gold"}
    check_schema(body)
    return body


def _stored(body: dict[str, Any]) -> Accepted:
    # Keys in another order and other spacing than the daemon writes: the stored bytes
    # follow the daemon's order and spacing whatever the sender used.
    keys = list(body)
    random.Random(7).shuffle(keys)
    raw = json.dumps({k: body[k] for k in keys}, indent=2).encode()
    result = validate(raw, 65536)
    assert isinstance(result, Accepted), result
    return result


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.parent.name)
def test_an_untouched_report_is_kept_as_the_daemon_serialises_it(path: Path) -> None:
    body = _received(path)
    result = _stored(body)
    assert result.redactions == ()
    assert result.body == serialise(to_report(body))
    assert tuple(json.loads(result.body)) == ray_keys(body["ray_version"])


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.parent.name)
def test_a_guarded_report_is_kept_as_the_daemon_serialises_the_guarded_one(path: Path) -> None:
    body = _received(path)
    body["library_usages"] = ["train", "/home/alice/secret"]
    tagged = "extra_usage_tags" in body
    if tagged:
        body["extra_usage_tags"] = {"team_tier": "gold", "owner": "alice@example.com"}
    result = _stored(body)
    expected = {"library_usages"} | ({"extra_usage_tags.owner"} if tagged else set())
    assert {r.field for r in result.redactions} == expected
    clean, _ = guard(to_report(body), KnownIdentifiers())
    assert result.body == serialise(clean)
    stored = json.loads(result.body)
    assert stored["library_usages"] == ["train"]
    assert stored.get("extra_usage_tags", {}) == ({"team_tier": "gold"} if tagged else {})
