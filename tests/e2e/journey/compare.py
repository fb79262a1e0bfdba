"""Compare usagestatsd's report with Ray's own, field by field (as tests/ray does).

python3 compare.py OURS.json RAYS.json     prints one line per field; exit 1 if any differ
"""

import json
import os
import re
import sys
from typing import Any

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
PER_REPORTER = ("collect_timestamp_ms", "total_success", "total_failed", "seq_number")
MEMORY = ("total_memory_gb", "total_object_store_memory_gb")


def counter_tag(key: str) -> bool:
    return key.startswith("num_") or "_num_" in key


def rays_report(directory: str, session_start: object) -> tuple[str, dict[str, Any]]:
    """The first report of the session Ray wrote, and the name of its file."""
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name)) as f:
            doc = json.load(f)
        report = doc.get("usage_stats", doc) if isinstance(doc, dict) else {}
        if report.get("session_start_timestamp_ms") == session_start:
            return name, report
    raise SystemExit(f"compare: no report of session start {session_start} in {directory}")


def main() -> int:
    with open(sys.argv[1]) as f:
        ours = json.load(f)
    name, rays = rays_report(sys.argv[2], ours.get("session_start_timestamp_ms"))
    print(f"  Ray's own report: written at {name}")
    bad = []

    def check(name: str, ok: bool, detail: str) -> None:
        print(f"  {'equal ' if ok else 'DIFFER'} {name}: {detail}")
        if not ok:
            bad.append(name)

    check("key set", set(ours) == set(rays), f"{len(ours)} keys, Ray's {len(rays)}")
    unchecked = set(rays) - {*EQUAL, *PER_REPORTER, *MEMORY, "library_usages", "extra_usage_tags"}
    check("every field compared", not unchecked, ", ".join(sorted(unchecked)) or "yes")
    for name in EQUAL:
        check(name, ours.get(name) == rays.get(name), f"{ours.get(name)!r} / {rays.get(name)!r}")
    for name in MEMORY:
        a, b = ours.get(name), rays.get(name)
        ok = isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= 0.01 * b
        check(name, ok, f"{a!r} / {b!r} (within 1%)")
    libs = set(ours.get("library_usages") or []), set(rays.get("library_usages") or [])
    check("library_usages (as a set)", libs[0] == libs[1], f"{sorted(libs[0])}")
    tags, ray_tags = ours.get("extra_usage_tags") or {}, rays.get("extra_usage_tags") or {}
    check("extra_usage_tags keys", set(tags) == set(ray_tags), f"{len(tags)} keys")
    steady = {k: v for k, v in ray_tags.items() if not counter_tag(k)}
    check("steady tag values", {k: tags.get(k) for k in steady} == steady, f"{len(steady)} tags")
    sid = str(ours.get("session_id"))
    check("session_id is Ray's cluster id", bool(re.fullmatch("[0-9a-f]{56}", sid)), sid)
    print(f"compare: {'equal' if not bad else 'DIFFERENT: ' + ', '.join(bad)}")
    return 1 if bad else 0


sys.exit(main())
