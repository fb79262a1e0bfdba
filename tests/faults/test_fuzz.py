"""Fuzzing every parser: only the project's own typed errors escape, each naming its source."""

from __future__ import annotations

import email.utils
import json
import math
import re
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from usagestatsd.config import settings as settings_module
from usagestatsd.config.settings import (
    MAX_TAG_VALUE_CHARS,
    SettingsError,
    load_settings,
    parse_extra_tags,
)
from usagestatsd.consent.decision import decide, read_consent_file
from usagestatsd.cycle.beside_ray import parse_sighting
from usagestatsd.cycle.sender import MAX_RETRY_AFTER_S, parse_retry_after
from usagestatsd.demo import recorded
from usagestatsd.facts.sources import (
    SourceError,
    decode_json,
    parse_cluster_config,
    parse_cluster_metadata,
    parse_cluster_status,
    parse_job_list,
    parse_provider,
)
from usagestatsd.store.state import StateError, StateStore

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# JSON-like values: what a hostile socket or file can hand the parsers once decoded.
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=20), inner, max_size=5)
    ),
    max_leaves=30,
)


@st.composite
def mutated(draw: st.DrawFn, base: Any) -> Any:
    """`base` with one node somewhere inside it replaced by a hostile value."""
    if not isinstance(base, (dict, list)) or not base or draw(st.integers(0, 4)) == 0:
        return draw(JSON_VALUES)
    if isinstance(base, dict):
        key = draw(st.sampled_from(sorted(base)))
        return {**base, key: draw(mutated(base[key]))}
    index = draw(st.integers(0, len(base) - 1))
    return [*base[:index], draw(mutated(base[index])), *base[index + 1 :]]


def recorded_doc(name: str) -> Any:
    """A recorded Ray 2.60 answer, decoded."""
    return json.loads(recorded(name))


PROVIDER_BASE = {
    "protocol_version": 1,
    "cluster_id": "0f" * 28,
    "library_usages": ["core", "train"],
    "extra_usage_tags": {"dashboard_used": "false"},
    "hardware_usages": ["NVIDIA A100"],
    "total_num_nodes": 1,
    "total_num_running_jobs": 0,
}
CONFIG_BASE = {
    "provider": {"type": "aws"},
    "min_workers": 0,
    "max_workers": 4,
    "head_node_type": "head",
    "available_node_types": {
        "head": {"node_config": {"InstanceType": "m5.large"}},
        "gpu": {"node_config": {"azure_arm_parameters": {"vmSize": "Standard_NC6"}}},
    },
}
PARSERS: list[tuple[str, Callable[[Any], Any], Any]] = [
    (
        "dash_ReportHead /api/v0/cluster_metadata",
        parse_cluster_metadata,
        recorded_doc("dash_report_cluster_metadata.json"),
    ),
    (
        "dash_ReportHead /api/cluster_status",
        parse_cluster_status,
        recorded_doc("dash_report_cluster_status.json"),
    ),
    ("dash_JobHead /api/jobs/", parse_job_list, recorded_doc("dash_job_list.json")),
    ("usagestatsd_provider /v1/usage", parse_provider, PROVIDER_BASE),
    ("cluster config file", parse_cluster_config, CONFIG_BASE),
]


def only_source_errors(source: str, parse: Callable[[Any], Any], doc: Any) -> None:
    """`parse(doc)` returns, or raises a SourceError naming `source` (nothing else)."""
    try:
        parse(doc)
    except SourceError as exc:
        assert exc.source == source and str(exc).startswith(f"{source}: ") and exc.problem


@FAST
@given(st.data())
def test_socket_parsers_raise_only_source_errors(data: st.DataObject) -> None:
    """Each parser, fed its recorded answer with one node made hostile, raises only SourceError."""
    for source, parse, base in PARSERS:
        only_source_errors(source, parse, data.draw(mutated(base), label=source))


@FAST
@given(JSON_VALUES)
def test_socket_parsers_on_arbitrary_json(doc: Any) -> None:
    """Each parser, fed any JSON value at all, raises only SourceError naming its source."""
    for source, parse, _ in PARSERS:
        only_source_errors(source, parse, doc)


@FAST
@given(st.one_of(st.binary(max_size=200), JSON_VALUES.map(lambda v: json.dumps(v).encode())))
def test_decode_json_raises_only_source_errors(body: bytes) -> None:
    """Any bytes: a value, or a SourceError naming the source; never NaN or Infinity out."""
    try:
        value = decode_json("dash_JobHead /api/jobs/", body)
    except SourceError as exc:
        assert exc.source == "dash_JobHead /api/jobs/" and exc.problem
        return
    json.dumps(value, allow_nan=False)  # raises if a NaN or an Infinity got through


def test_decode_json_deep_nesting() -> None:
    """A million nested brackets are one SourceError, not a crash."""
    with pytest.raises(SourceError) as caught:
        decode_json("s", b"[" * 1_000_000 + b"]" * 1_000_000)
    assert caught.value.source == "s" and "nested" in caught.value.problem


@FAST
@given(
    st.one_of(
        st.none(),
        st.text(max_size=60),
        st.integers(-(10**20), 10**20).map(str),
        st.datetimes(
            min_value=datetime(1900, 1, 1), max_value=datetime(9999, 1, 1), timezones=st.just(UTC)
        ).map(lambda d: email.utils.format_datetime(d, usegmt=True)),
    ),
    st.floats(min_value=0, max_value=1e10),
)
def test_parse_retry_after_never_raises(header: str | None, now: float) -> None:
    """Any Retry-After header: None or a wait between 0 and a day; never an exception."""
    wait = parse_retry_after(header, now)
    assert wait is None or (math.isfinite(wait) and 0 <= wait <= MAX_RETRY_AFTER_S)


ACCEPTED_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@FAST
@given(
    st.one_of(
        st.text(max_size=120),
        st.lists(st.tuples(st.text(max_size=70), st.text(max_size=300)), max_size=4).map(
            lambda pairs: ";".join(f"{k}={v}" for k, v in pairs)
        ),
        st.dictionaries(st.text(max_size=70), st.one_of(st.text(max_size=300), st.integers())),
        JSON_VALUES,
    )
)
def test_parse_extra_tags(raw: Any) -> None:
    """Tags parse within the limits (key 1-64 safe chars, value <= 256 printable) or say why."""
    try:
        tags = parse_extra_tags(raw)
    except ValueError as exc:
        assert "key=value" in str(exc)
        return
    for key, value in tags.items():
        assert ACCEPTED_KEY.match(key)
        assert len(value) <= MAX_TAG_VALUE_CHARS and value.isprintable()


ENV_NAMES = sorted(
    settings_module.read_variables()
    | set(settings_module.SystemdHandoff.VARIABLES)
    | {"KUBERNETES_SERVICE_HOST"}
)
ENV_TEXT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["0", "1", "-1", "1e999", "nan", "inf", "off", "127.0.0.1:0", "/", "~"]),
    st.from_regex(r"\Ahttps?://[a-z0-9.:\[\]@/-]{0,30}\Z"),
)


def check_settings_error(exc: SettingsError, allowed: set[str]) -> None:
    """The error names a setting and a source the caller actually used."""
    assert exc.source in allowed, (exc.source, allowed)
    assert f"invalid setting {exc.name} from {exc.source}" in str(exc)


@FAST
@given(st.dictionaries(st.sampled_from(ENV_NAMES), ENV_TEXT, max_size=6))
def test_hostile_environment(env: dict[str, str]) -> None:
    """Any environment: Settings, or a SettingsError naming the variable that was wrong."""
    empty = Path(tempfile.mkdtemp(prefix="usd-f-")) / "empty.toml"
    empty.write_text("")
    try:
        load_settings(env, {}, empty)
    except SettingsError as exc:
        check_settings_error(exc, {f"environment variable {name}" for name in env})
    finally:
        shutil.rmtree(empty.parent)


def toml_value(value: Any) -> str:
    """A TOML rendering of a JSON-like value (inline tables and arrays)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items())
        return "{" + inner + "}"
    return '""'


FILE_KEYS = sorted(d.file_key for d in settings_module.DECLARED if d.file_key)
FILE_VALUES = st.one_of(
    JSON_VALUES.filter(lambda v: v is not None),
    ENV_TEXT,
    st.lists(st.fixed_dictionaries({"url": ENV_TEXT}), min_size=1, max_size=2),
)


@FAST
@given(
    st.one_of(
        st.dictionaries(
            st.one_of(st.sampled_from(FILE_KEYS), st.text(min_size=1, max_size=10)),
            FILE_VALUES,
            max_size=5,
        ).map(lambda table: "\n".join(f"{k} = {toml_value(v)}" for k, v in table.items())),
        st.text(max_size=200),
        st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    )
)
def test_hostile_settings_file(text: str) -> None:
    """Any settings file: Settings, or a SettingsError naming that file (or the key in it)."""
    root = Path(tempfile.mkdtemp(prefix="usd-f-"))
    path = root / "usagestatsd.toml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        load_settings({}, {}, path)
    except SettingsError as exc:
        check_settings_error(exc, {f"settings file {path}"})
    finally:
        shutil.rmtree(root)


@FAST
@given(
    st.one_of(
        st.binary(max_size=100),
        JSON_VALUES.map(lambda v: json.dumps(v).encode()),
        st.dictionaries(st.text(max_size=5), JSON_VALUES, max_size=3).map(
            lambda d: json.dumps({**d, "usage_stats": d.get("usage_stats")}).encode()
        ),
    )
)
def test_hostile_consent_file(content: bytes) -> None:
    """Any consent file: a clear decision; a broken file disables and the error names it."""
    root = Path(tempfile.mkdtemp(prefix="usd-f-"))
    path = root / "config.json"
    path.write_bytes(content)
    (root / "empty.toml").write_text("")
    try:
        consent = read_consent_file(path)
        decision = decide(
            load_settings({"RAY_USAGE_STATS_CONFIG_PATH": str(path)}, {}, root / "empty.toml"),
            consent,
            False,
        )
    finally:
        shutil.rmtree(root)
    if consent.problem:
        assert not decision.enabled and decision.error and str(path) in decision.error
    else:
        assert consent.value in (True, False, None) and decision.error is None


@FAST
@given(
    st.one_of(
        st.binary(max_size=200),
        JSON_VALUES.map(lambda v: json.dumps(v).encode()),
        st.builds(
            lambda d: json.dumps({"format": 1, **d}).encode(),
            st.dictionaries(
                st.sampled_from(["session", "last_report", "next_report_ms", "x"]), JSON_VALUES
            ),
        ),
    )
)
def test_hostile_state_file(content: bytes) -> None:
    """Any state.json: a State, or a StateError naming the file (then it is set aside)."""
    root = Path(tempfile.mkdtemp(prefix="usd-f-"))
    (root / "state.json").write_bytes(content)
    try:
        StateStore(root).load()
    except StateError as exc:
        assert str(exc).startswith(f"{root / 'state.json'}: ")
    finally:
        shutil.rmtree(root)


@FAST
@given(st.one_of(st.binary(max_size=200), JSON_VALUES.map(lambda v: json.dumps(v).encode())))
def test_intake_sighting_never_raises(body: bytes) -> None:
    """Whatever is POSTed to the loopback intake for Ray's reporter parses without an exception."""
    sighting = parse_sighting(body, 1)
    assert sighting.received_ms == 1


@FAST
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=80),
            JSON_VALUES.map(lambda v: json.dumps(v).encode()),
            st.builds(
                lambda t, s: json.dumps(
                    {
                        "kind": "report",
                        "time_ms": t,
                        "session_id": s,
                        "endpoint": "https://x/",
                        "outcome": "sent",
                        "status": 200,
                        "error": None,
                        "sha256": None,
                        "body": "{}",
                    }
                ).encode(),
                st.integers(0, 2 * 10**12),
                st.text(max_size=8),
            ),
        ),
        max_size=40,
    ).map(lambda lines: b"\n".join(lines))
)
def test_hostile_history_file(content: bytes) -> None:
    """Any history.jsonl: loading skips what is damaged; compaction keeps only whole records."""
    from usagestatsd.store.history import History

    root = Path(tempfile.mkdtemp(prefix="usd-f-"))
    (root / "history.jsonl").write_bytes(content)
    try:
        history = History(root, max_bytes=4096, max_age_days=1)
        before = history.load()
        dropped = history.compact(2 * 10**12)
        after = history.load()
    finally:
        shutil.rmtree(root)
    assert after.skipped == 0 and dropped == len(before.records) - len(after.records)
    assert sum(len(r.to_line()) for r in after.records) <= 4096
