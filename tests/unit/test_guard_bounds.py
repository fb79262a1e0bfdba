"""The privacy guard's work is bounded: lengths before patterns, items, text per report,
and detectors that find what the old backtracking patterns found."""

from __future__ import annotations

import re
import re._parser as sre_parse  # type: ignore[import-not-found]  # the width of a pattern

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_report import recorded_report
from usagestatsd.contract.fields import FIELDS, MAX_ITEMS
from usagestatsd.contract.guard import MAX_CHECKED_CHARS, guard
from usagestatsd.contract.identifiers import KnownIdentifiers, identifying_reason
from usagestatsd.contract.ray_tags import RAY_TAG_SHAPES

NOBODY = KnownIdentifiers()
DOTTED = "a." * 511 + "a"  # 1,023 characters: the collector's longest string


def test_every_shape_is_bounded_by_its_declared_length() -> None:
    """No shape matches a value longer than the length the guard checks first."""
    for spec in FIELDS:
        if spec.shape is not None:
            assert spec.max_chars is not None, spec.name
            assert sre_parse.parse(spec.shape.pattern).getwidth()[1] <= spec.max_chars, spec.name
    for name, shape in RAY_TAG_SHAPES.items():
        widest = sre_parse.parse(shape.pattern.pattern).getwidth()[1]
        assert widest <= shape.max_chars or shape.refused, name


def test_long_values_are_refused_by_length_alone() -> None:
    """A value longer than its field allows is refused as such (no detector names it)."""
    report = recorded_report().with_fields(
        library_usages=(DOTTED, "core"),
        head_node_instance_type="a." * 32_000,
        ray_version="2.60.0" + "0" * 100,
    )
    clean, redactions = guard(report, NOBODY)
    assert clean.library_usages == ("core",)
    assert clean.head_node_instance_type is None and clean.ray_version is None
    reasons = {(r.field, r.reason) for r in redactions}
    assert ("library_usages", "longer than 64 characters") in reasons
    assert ("head_node_instance_type", "longer than 64 characters") in reasons
    assert ("ray_version", "longer than 23 characters") in reasons


def test_items_beyond_the_cap_are_dropped_and_named_once() -> None:
    """At most MAX_ITEMS list items are looked at; the rest are one named redaction."""
    libraries = tuple(f"lib{i}" for i in range(MAX_ITEMS + 50))
    clean, redactions = guard(recorded_report().with_fields(library_usages=libraries), NOBODY)
    assert clean.library_usages == libraries[:MAX_ITEMS]
    assert [r.reason for r in redactions] == [f"more than {MAX_ITEMS} items"]


def test_text_beyond_the_budget_is_refused_unread() -> None:
    """Past MAX_CHECKED_CHARS of text in one report, values are refused, not read; the
    session_id and the scalars, checked first, are never affected."""
    names = tuple(f"Library{i:03d}" + "x" * 50 for i in range(MAX_ITEMS))
    clean, redactions = guard(recorded_report().with_fields(library_usages=names), NOBODY)
    kept = len(clean.library_usages)
    assert 0 < kept < MAX_ITEMS and kept * 60 <= MAX_CHECKED_CHARS
    assert clean.library_usages == names[:kept]
    assert {r.reason for r in redactions} == {
        f"the report holds more text than the guard reads ({MAX_CHECKED_CHARS} characters)"
    }
    assert clean.session_id == recorded_report().session_id


def test_costly_strings_for_the_old_patterns_are_still_judged() -> None:
    """Strings that made the old patterns backtrack get an answer (and the right one)."""
    assert identifying_reason("a." * 4000 + "a", NOBODY) == "host name"
    assert identifying_reason("A." * 4000 + "1", NOBODY) is None
    assert identifying_reason("ab" * 4000, NOBODY) is None
    assert identifying_reason("x" * 8000 + "@", NOBODY) is None
    assert identifying_reason("a" * 8000 + "://", NOBODY) == "URL"


# The detectors as they were before they were made linear: the reference for what the new
# ones must find (cheap enough on short strings).
_OLD_FQDN = re.compile(
    r"(?<![A-Za-z0-9-])(?:[A-Za-z0-9-]{1,63}\.)+(?:com|net|org|io|local|internal|corp|"
    r"[a-z]{2})(?![A-Za-z0-9])",
    re.I,
)
_OLD_DOTTED = re.compile(
    r"(?<![A-Za-z0-9.-])(?:(?:[a-z0-9-]{1,63}\.){2,}[a-z][a-z0-9-]{0,62}"
    r"|(?:[A-Za-z0-9-]{1,63}\.){3,}[A-Za-z][A-Za-z0-9-]{0,62})(?![A-Za-z0-9.-])"
)
_OLD_SIZE = re.compile(r"(?i).*\.(nano|micro|small|medium|large|[0-9]*xlarge|metal)")
_NAMEISH = st.text("abAB01-._ ", max_size=24) | st.lists(
    st.sampled_from(["a", "db", "Pool", "com", "internal", "x-1", "large", "io", "", "7"]),
    max_size=6,
).map(".".join)


@settings(max_examples=400, deadline=None)
@given(_NAMEISH)
def test_host_name_detection_finds_what_the_old_patterns_found(value: str) -> None:
    """Every value the old (backtracking) host-name patterns flagged is still flagged."""
    old = bool(_OLD_FQDN.search(value)) or any(
        not _OLD_SIZE.fullmatch(m.group()) for m in _OLD_DOTTED.finditer(value)
    )
    if old:
        assert identifying_reason(value, NOBODY) is not None, value
