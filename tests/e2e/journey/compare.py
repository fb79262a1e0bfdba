"""Compare usagestatsd's report with Ray's own, field by field: the one comparison.

The journey (tests/e2e/journey.sh) runs it as a script on the reports it collected; the
real-Ray suite (tests/ray/test_real_ray.py) and the recorded-replies test
(tests/unit/test_ray_versions.py) import `field_checks`. It uses only the standard library,
so that it runs wherever a report was collected.

python3 compare.py OURS.json RAYS_DIR     prints one line per field; exit 1 if any differ
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

# Fields equal in both reports when taken a moment apart from the same head.
EQUAL = (
    "schema_version",
    "source",
    "ray_version",
    "python_version",
    "git_commit",
    "os",
    "libc_version",
    "session_start_timestamp_ms",
    "session_id",
    "cloud_provider",
    "min_workers",
    "max_workers",
    "head_node_instance_type",
    "worker_node_instance_types",
    "total_num_cpus",
    "total_num_gpus",
    "total_num_nodes",
    "total_num_running_jobs",
    "hardware_usages",
)
# Each reporter's own counters: they count that reporter's attempts, so they differ.
PER_REPORTER = ("collect_timestamp_ms", "total_success", "total_failed", "seq_number")
# Measured a moment apart: equal within 1%.
MEMORY = ("total_memory_gb", "total_object_store_memory_gb")
# Compared as sets: the order is the order of first use.
AS_SETS = ("library_usages", "extra_usage_tags")


class Check(NamedTuple):
    """One comparison: what was compared, whether it held, and the values seen."""

    name: str
    ok: bool
    detail: str


def counter_tag(key: str) -> bool:
    """Extra tags that count things (tasks, drivers, actors...) and so may move between reads."""
    return key.startswith("num_") or "_num_" in key


def json_type(value: Any) -> str:
    """The JSON type of a decoded value; whole numbers ("integer") are told from "number"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "integer" if isinstance(value, int) else "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _near(a: Any, b: Any) -> bool:
    numbers = isinstance(a, (int, float)) and isinstance(b, (int, float))
    return numbers and abs(a - b) <= 0.01 * abs(b)


def field_checks(
    ours: Mapping[str, Any], rays: Mapping[str, Any], equal: Sequence[str] = EQUAL
) -> list[Check]:
    """Every comparison of our report with Ray's: the key set, that no field goes unchecked,
    the JSON types, the `equal` fields, memory within 1%, libraries and tag keys as sets,
    the values of the tags that are not counters, and that counters are whole numbers."""
    checks = [Check("key set", set(ours) == set(rays), f"{len(ours)} keys, Ray's {len(rays)}")]
    unchecked = set(rays) - {*EQUAL, *PER_REPORTER, *MEMORY, *AS_SETS}
    checks.append(
        Check("every field compared", not unchecked, ", ".join(sorted(unchecked)) or "yes")
    )
    types = {k: (json_type(ours.get(k)), json_type(v)) for k, v in rays.items()}
    wrong = sorted(f"{k} {a}/{b}" for k, (a, b) in types.items() if a != b)
    checks.append(Check("JSON types", not wrong, ", ".join(wrong) or "the same"))
    for name in equal:
        a, b = ours.get(name), rays.get(name)
        checks.append(Check(name, a == b, f"ours {a!r}, Ray's {b!r}"))
    for name in MEMORY:
        a, b = ours.get(name), rays.get(name)
        checks.append(Check(name, _near(a, b), f"ours {a!r}, Ray's {b!r} (within 1%)"))
    libs, ray_libs = set(ours.get("library_usages") or []), set(rays.get("library_usages") or [])
    checks.append(Check("library_usages (as a set)", libs == ray_libs, f"{sorted(libs)}"))
    tags, ray_tags = ours.get("extra_usage_tags") or {}, rays.get("extra_usage_tags") or {}
    checks.append(Check("extra_usage_tags keys", set(tags) == set(ray_tags), f"{len(tags)} keys"))
    steady = {k: v for k, v in ray_tags.items() if not counter_tag(k)}
    same = {k: tags.get(k) for k in steady} == steady
    checks.append(Check("steady tag values", same, f"{len(steady)} tags"))
    counters = [k for k in ray_tags if counter_tag(k)]
    whole = all(str(tags.get(k, "")).isdigit() and str(ray_tags[k]).isdigit() for k in counters)
    checks.append(Check("counter tags are whole numbers", whole, f"{len(counters)} tags"))
    return checks


def failed(checks: Sequence[Check]) -> list[str]:
    """The failed checks, one line each (for an assertion message)."""
    return [f"{c.name}: {c.detail}" for c in checks if not c.ok]


def rays_report(directory: str, session_start: object) -> tuple[str, dict[str, Any]]:
    """The first report of the session Ray wrote, and the name of its file."""
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name)) as f:
            doc = json.load(f)
        report = doc.get("usage_stats", doc) if isinstance(doc, dict) else {}
        if report.get("session_start_timestamp_ms") == session_start:
            return name, report
    raise SystemExit(f"compare: no report of session start {session_start} in {directory}")


def main(argv: Sequence[str]) -> int:
    """Print every check of OURS.json against Ray's report in RAYS_DIR; 1 if any failed."""
    with open(argv[0]) as f:
        ours = json.load(f)
    name, rays = rays_report(argv[1], ours.get("session_start_timestamp_ms"))
    print(f"  Ray's own report: written at {name}")
    sid = str(ours.get("session_id"))
    checks = field_checks(ours, rays)
    cluster_id = bool(re.fullmatch("[0-9a-f]{56}", sid))
    checks.append(Check("session_id is Ray's cluster id", cluster_id, sid))
    for check in checks:
        print(f"  {'equal ' if check.ok else 'DIFFER'} {check.name}: {check.detail}")
    bad = [c.name for c in checks if not c.ok]
    print(f"compare: {'equal' if not bad else 'DIFFERENT: ' + ', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
