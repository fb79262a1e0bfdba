"""Every report field, declared once: the one place a schema change is made. Pure.

One `Field` per field of Ray's schema 0.1, in Ray's order, with its JSON type, its privacy
shape or limit, the consent field-set version that added it (`since`), whether an
administrator may redact it, and so its blank value. Everything else is derived from
`FIELDS`: the JSON Schema, the schema check and the key order (contract/report.py), the privacy
guard's shapes and limits (contract/guard.py), the field sets of versioned consent and the
redactable fields (contract/fieldsets.py), the blanks (report.nulls_for), and which keys a report
of each Ray version carries (`ray_since`, `ray_keys`: exactly the keys Ray's own report of
that version has). The typed `Report` value
(contract/report.py) spells the same names out for mypy; a test holds it to this declaration.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

SCHEMA_VERSION = "0.1"
# What `usagestatsd forget` sends and the collector honours (docs/deletion-protocol.md):
# the request names the sessions it deletes by their session_id, of SESSION_ID's shape.
DELETION_PROTOCOL = "usagestatsd-deletion/1"

# Field-set versions of versioned consent (docs/consent.md):
# 1: the fields of Ray's original usage-stats policy (Ray 1.13 to 2.x), the base set.
# 2: adds what Ray's reporter learned to collect later, about the machine itself.
BASE_VERSION = 1

# The first Ray with usage stats (its report has 22 keys); `ray_since` of the original keys.
FIRST_RAY = (1, 13)


class Json(Enum):
    """A field's JSON type in schema 0.1 (numbers are never negative, never NaN)."""

    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    STRING_LIST = "array of strings"
    STRING_MAP = "object of strings"


# ---------------------------------------------------------------------------
# Privacy shapes: what a legitimate value looks like (Ray's versions, instance types,
# library names...). Always matched with fullmatch: a `$` anchor also matches before a
# final newline. The guard (contract/guard.py) nulls a value or drops an item outside its shape.

# session_id: Ray's cluster id (28 bytes, 56 hex digits), the daemon's own uuid4 hex, or (Ray
# up to 2.20) the session UUID Ray's metadata keeps, in its dashed form.
SESSION_ID = re.compile(
    r"[0-9a-f]{32}|[0-9a-f]{56}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
)
SOURCE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# Ray's own version forms only: a release (2.60.0), a release candidate (2.60.0rc1), a nightly
# (3.0.0.dev0). No `+local` suffix: it is free text where a host or user name could ride along.
RAY_VERSION = re.compile(
    r"[0-9]{1,4}\.[0-9]{1,4}\.[0-9]{1,4}(?:(?:a|b|rc)[0-9]{1,4}|\.dev[0-9]{0,4}|\.post[0-9]{1,4})?"
)
PYTHON_VERSION = re.compile(r"[0-9]{1,2}\.[0-9]{1,3}\.[0-9]{1,3}[A-Za-z0-9.+]{0,16}")
GIT_COMMIT = re.compile(r"[0-9a-f]{7,40}")
OS = re.compile(r"[a-z][a-z0-9]{0,15}")
LIBC_VERSION = re.compile(r"[a-z]{1,16}:[0-9]{1,4}(\.[0-9]{1,4}){0,3}")
CLOUD_PROVIDER = re.compile(r"[a-z0-9_-]{1,32}")
INSTANCE_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
LIBRARY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
HARDWARE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.()+-]{0,63}")
# A tag key, from the provider or the operator's RAY_USAGE_STATS_EXTRA_TAGS (config/settings.py).
MAX_TAG_KEY_CHARS = 64
TAG_KEY_RE = re.compile(rf"[A-Za-z0-9_.-]{{1,{MAX_TAG_KEY_CHARS}}}")
MAX_TAG_VALUE_CHARS = 256
TAG_VALUE = re.compile(rf"[A-Za-z0-9 _.,:+=-]{{0,{MAX_TAG_VALUE_CHARS}}}")
# The most list items or tags the guard looks at; the rest are dropped (Ray's reports carry
# a few; the collector refuses more than this many).
MAX_ITEMS = 256

# Privacy limits: upper bounds for counts and sizes; beyond these a value is a lie or an attack.
_YEAR_2100_MS = 4_102_444_800_000
_MAX_WORKERS = 10_000_000
_MAX_GB = 1e12


@dataclass(frozen=True)
class Field:
    """One report field and every decision about it."""

    name: str
    json: Json
    nullable: bool = False
    # The privacy guard's shape for a string, for each item of a list, for each map value.
    shape: re.Pattern[str] | None = None
    key_shape: re.Pattern[str] | None = None  # a map's keys
    # The longest string (or item, or map value) the shape can match: a longer one is
    # refused before any pattern runs on it (tests/unit/test_fields.py checks the bound).
    max_chars: int | None = None
    # The privacy guard's upper bound for a count or size (None: not checked).
    limit: int | float | None = None
    since: int = BASE_VERSION  # the consent field-set version that added the field
    # False for the fields that identify the report (it cannot exist without them): a
    # person never accepts them separately and an administrator cannot blank them.
    redactable: bool = True
    const: str | None = None  # the one value the field may have
    # The Ray release whose own report first carried the key (measured on recorded reports,
    # tests/data/ray-*/report_payload.json): a report for an older Ray leaves the key out.
    ray_since: tuple[int, int] = FIRST_RAY

    @property
    def blank(self) -> Any:
        """The value that blanks the field (redacted, withheld) and keeps the report valid."""
        if self.nullable:
            return None
        if self.json is Json.STRING_LIST:
            return ()
        if self.json is Json.STRING_MAP:
            return {}
        raise ValueError(f"report field {self.name} cannot be blanked: schema 0.1 requires it")


_S, _I, _N, _L, _M = Json.STRING, Json.INTEGER, Json.NUMBER, Json.STRING_LIST, Json.STRING_MAP

# Ray's order: the key order of the body Ray 2.60 sends (tests/data/ray-2.60.0).
FIELDS: tuple[Field, ...] = (
    Field("schema_version", _S, const=SCHEMA_VERSION, redactable=False),
    Field("source", _S, shape=SOURCE, max_chars=64, redactable=False),
    Field("collect_timestamp_ms", _I, limit=_YEAR_2100_MS, redactable=False),
    Field("total_success", _I, redactable=False),
    Field("total_failed", _I, redactable=False),
    Field("seq_number", _I, redactable=False),
    Field("ray_version", _S, nullable=True, shape=RAY_VERSION, max_chars=23),
    Field("python_version", _S, nullable=True, shape=PYTHON_VERSION, max_chars=26),
    Field("session_id", _S, shape=SESSION_ID, max_chars=56, redactable=False),
    Field("git_commit", _S, nullable=True, shape=GIT_COMMIT, max_chars=40),
    Field("os", _S, nullable=True, shape=OS, max_chars=16),
    Field("session_start_timestamp_ms", _I, nullable=True, limit=_YEAR_2100_MS),
    Field("cloud_provider", _S, nullable=True, shape=CLOUD_PROVIDER, max_chars=32),
    Field("min_workers", _I, nullable=True, limit=_MAX_WORKERS),
    Field("max_workers", _I, nullable=True, limit=_MAX_WORKERS),
    Field("head_node_instance_type", _S, nullable=True, shape=INSTANCE_TYPE, max_chars=64),
    Field("worker_node_instance_types", _L, nullable=True, shape=INSTANCE_TYPE, max_chars=64),
    Field("total_num_cpus", _I, nullable=True, limit=1_000_000_000),
    Field("total_num_gpus", _I, nullable=True, limit=100_000_000),
    Field("total_memory_gb", _N, nullable=True, limit=_MAX_GB),
    Field("total_object_store_memory_gb", _N, nullable=True, limit=_MAX_GB),
    Field("library_usages", _L, shape=LIBRARY, max_chars=64),
    Field(
        "extra_usage_tags",
        _M,
        shape=TAG_VALUE,
        key_shape=TAG_KEY_RE,
        max_chars=MAX_TAG_VALUE_CHARS,
        ray_since=(2, 0),
    ),
    Field("total_num_nodes", _I, nullable=True, limit=10_000_000, ray_since=(2, 0)),
    Field("total_num_running_jobs", _I, nullable=True, limit=100_000_000, ray_since=(2, 0)),
    Field(
        "libc_version",
        _S,
        nullable=True,
        shape=LIBC_VERSION,
        max_chars=36,
        since=2,
        ray_since=(2, 5),
    ),
    Field("hardware_usages", _L, shape=HARDWARE, max_chars=64, since=2, ray_since=(2, 9)),
)

REPORT_FIELDS: tuple[str, ...] = tuple(f.name for f in FIELDS)
BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}
CURRENT_VERSION = max(f.since for f in FIELDS)

_RAY_RELEASE = re.compile(r"([0-9]{1,4})\.([0-9]{1,4})")


def ray_release(ray_version: str | None) -> tuple[int, int] | None:
    """(major, minor) of a Ray version string, or None when there is none to read."""
    if ray_version is None or not RAY_VERSION.fullmatch(ray_version):
        return None  # not a version (a hostile or broken metadata): decides nothing
    found = _RAY_RELEASE.match(ray_version)
    return (int(found.group(1)), int(found.group(2))) if found else None


def ray_keys(ray_version: str | None) -> tuple[str, ...]:
    """The keys Ray's own report of `ray_version` carries, in Ray's order.

    Every key for an unknown version (no metadata, or a version string not understood):
    the newest schema is the safe default. Below 1.13 Ray reported nothing; those get the
    first set (and the daemon names such a version unsupported, cycle/refusal.py).
    """
    release = ray_release(ray_version)
    if release is None:
        return REPORT_FIELDS
    return _keys_since(max(release, FIRST_RAY))


@functools.lru_cache(maxsize=64)
def _keys_since(release: tuple[int, int]) -> tuple[str, ...]:
    # Asked twice for every report a collector takes: the few releases seen are kept.
    return tuple(f.name for f in FIELDS if f.ray_since <= release)
