"""Each report field is declared once (contract/fields.py) and every table is derived from that.

A field Ray sends that we did not declare, a field declared twice, or a derived table (the
schema, the privacy guard, the blanks, the consent field sets, the tag-key pattern) that
misses a declared field or covers one that is not declared fails here.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_report import recorded_report
from usagestatsd.collector.validate import Accepted, Rejected, validate
from usagestatsd.config.settings import parse_extra_tags
from usagestatsd.contract.fields import (
    BASE_VERSION,
    FIELDS,
    MAX_TAG_KEY_CHARS,
    REPORT_FIELDS,
    Field,
    Json,
    ray_keys,
)
from usagestatsd.contract.fieldsets import CURRENT_VERSION, fields_of, redactable, withheld
from usagestatsd.contract.guard import KnownIdentifiers, guard
from usagestatsd.contract.report import (
    REPORT_JSON_SCHEMA,
    Report,
    check_schema,
    nulls_for,
    serialise,
)
from usagestatsd.demo import recorded

DATA = Path(__file__).parents[1] / "data"
RECORDED = sorted(DATA.glob("ray-*/report_payload.json"))
DECLARED = set(REPORT_FIELDS)
# The fields that identify the report: never redactable, never withheld.
STRUCTURAL = {
    "schema_version",
    "source",
    "collect_timestamp_ms",
    "total_success",
    "total_failed",
    "seq_number",
    "session_id",
}
# Our own counters and the constant: the guard has nothing to check in them.
UNGUARDED = {"schema_version", "total_success", "total_failed", "seq_number"}
PLANTED = "192.0.2.2"  # an address, in every string the guard checks


def test_each_field_is_declared_exactly_once() -> None:
    """No name is declared twice."""
    assert [n for n, count in Counter(REPORT_FIELDS).items() if count > 1] == []


@pytest.mark.parametrize("path", RECORDED, ids=[p.parent.name for p in RECORDED])
def test_every_field_ray_sent_is_declared(path: Path) -> None:
    """Each recorded Ray body has exactly the fields declared for its Ray version."""
    body = json.loads(path.read_text())
    assert set(body) == set(ray_keys(body["ray_version"])) <= DECLARED


def test_declared_order_is_rays_order() -> None:
    """The declaration lists the fields in the key order of Ray 2.60's real body (as sent;
    tests/data holds the bodies with sorted keys)."""
    assert tuple(json.loads(recorded("report_payload.json"))) == REPORT_FIELDS
    assert tuple(recorded_report().to_json_dict()) == REPORT_FIELDS


def test_schema_covers_exactly_the_declared_fields() -> None:
    """The published JSON Schema requires and describes each declared field, in order."""
    assert tuple(REPORT_JSON_SCHEMA["required"]) == REPORT_FIELDS
    assert tuple(REPORT_JSON_SCHEMA["properties"]) == REPORT_FIELDS


_PYTHON_TYPES = {
    Json.STRING: "str",
    Json.INTEGER: "int",
    Json.NUMBER: "float",
    Json.STRING_LIST: "tuple[str, ...]",
    Json.STRING_MAP: "Mapping[str, str]",
}


def test_typed_report_agrees_with_the_declaration() -> None:
    """The Report value spells out the declared fields, in order, with matching types."""
    declared = [(f.name, _PYTHON_TYPES[f.json] + (" | None" if f.nullable else "")) for f in FIELDS]
    assert [(f.name, f.type) for f in fields(Report)] == declared


@pytest.mark.parametrize("spec", FIELDS, ids=REPORT_FIELDS)
def test_schema_check_follows_the_declared_type(spec: Field) -> None:
    """A null passes the check only where the field is declared nullable."""
    body = recorded_report().to_json_dict()
    body[spec.name] = None
    if spec.nullable:
        check_schema(body)
    else:
        with pytest.raises(ValueError, match=spec.name):
            check_schema(body)


def _planted(spec: Field) -> Report:
    """The recorded report with an address planted in `spec`, or a count over its limit."""
    value: Any = PLANTED
    if spec.json is Json.INTEGER:
        value = int(spec.limit) + 1 if spec.limit is not None else 10**15
    elif spec.json is Json.NUMBER:
        value = (spec.limit or 1.0) * 10
    elif spec.json is Json.STRING_LIST:
        value = ("ok", PLANTED)
    elif spec.json is Json.STRING_MAP:
        value = {"team": PLANTED}
    planted: Report = recorded_report().with_fields(**{spec.name: value})
    return planted


def test_the_guard_checks_exactly_the_declared_shapes_and_limits() -> None:
    """Each field with a shape or a limit is checked by the guard; the others are not."""
    guarded = {f.name for f in FIELDS if f.shape is not None or f.limit is not None}
    assert DECLARED - guarded == UNGUARDED
    known = KnownIdentifiers()
    for spec in FIELDS:
        if spec.name == "session_id":
            with pytest.raises(ValueError, match="session_id"):
                guard(_planted(spec), known)
            continue
        _, redactions = guard(_planted(spec), known)
        found = {r.field.split(".")[0].split("[")[0] for r in redactions}
        assert found == ({spec.name} if spec.name in guarded else set()), spec.name


def test_blanks_keep_the_report_valid() -> None:
    """Each redactable field has a blank that keeps the report schema-valid; the others none."""
    report = recorded_report()
    names = [f.name for f in FIELDS if f.redactable]
    serialise(report.with_fields(**nulls_for(names)))
    for name in STRUCTURAL:
        with pytest.raises(ValueError, match=name):
            nulls_for([name])


def test_consent_field_sets_follow_since() -> None:
    """Each version covers the fields declared up to it; the newer ones are withheld."""
    assert fields_of(CURRENT_VERSION) == DECLARED
    for version in range(BASE_VERSION, CURRENT_VERSION + 1):
        assert fields_of(version) == {f.name for f in FIELDS if f.since <= version}
    assert withheld(BASE_VERSION) == ("libc_version", "hardware_usages")
    assert withheld(CURRENT_VERSION) == ()
    assert not STRUCTURAL & set(withheld(BASE_VERSION))


def test_redactable_is_the_declaration() -> None:
    """Every declared field but the structural ones may be redacted; no other name may."""
    assert {n for n in REPORT_FIELDS if not redactable(n)} == STRUCTURAL
    assert not redactable("hostname")


@pytest.mark.parametrize("length", [MAX_TAG_KEY_CHARS, MAX_TAG_KEY_CHARS + 1])
def test_one_tag_key_limit_everywhere(length: int) -> None:
    """The operator's tags, the guard and the collector all take keys up to the same length."""
    key = "k" * length
    fits = length <= MAX_TAG_KEY_CHARS
    if fits:
        assert parse_extra_tags(f"{key}=1") == {key: "1"}
    else:
        with pytest.raises(ValueError, match="bad key"):
            parse_extra_tags(f"{key}=1")
    clean, _ = guard(recorded_report(extra_tags={key: "1"}), KnownIdentifiers())
    assert (key in clean.extra_usage_tags) == fits
    body = recorded_report().to_json_dict()
    body["extra_usage_tags"] = {key: "1"}
    result = validate(json.dumps(body).encode(), 65536)
    assert isinstance(result, Accepted if fits else Rejected)
