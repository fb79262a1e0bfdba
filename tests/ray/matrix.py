"""Run the real-Ray suite on several Ray versions, one at a time, and tabulate the result.

    python -m tests.ray.matrix [--write-docs] [--matrix "V1 V2 ..."] VERSION...

Each version is `make test-ray RAY_VERSION=<version>` (its cached venv, installed if
missing), timed. The field-by-field comparison of the first real-Ray test is collected
per version (equal / null / differs per field group), and kept in RESULTS with the day it
was measured, so that runs of a few versions at a time add up. The table has one column
per version of --matrix (default: the versions run): the latest result of each, with its
day, and "not run" for a version never run. With --write-docs it replaces what is between
the markers in docs/real-ray.md and README.md. Exits non-zero when a version run fails.
A version that cannot run on this machine (a Ray before 2.9 without Python 3.10) is
reported as skipped, neither passed nor kept.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "matrix-results.json"
BEGIN = "<!-- ray-matrix:begin (make test-ray-matrix writes this table) -->"
END = "<!-- ray-matrix:end -->"
GROUPS = (
    "versions",
    "git commit",
    "os, libc",
    "session start",
    "CPUs, GPUs",
    "memory, object store",
    "nodes",
    "running jobs",
    "library usages",
    "hardware usages",
    "session id",
    "extra tag keys",
)


def run_version(version: str) -> dict[str, Any]:
    """`make test-ray` for one version: passed, seconds, and the comparison by group; or
    only why it was skipped."""
    with tempfile.NamedTemporaryFile(prefix="usd-matrix-", suffix=".json") as out:
        env = {**os.environ, "USAGESTATSD_MATRIX_OUT": out.name}
        began = time.monotonic()
        done = subprocess.run(
            [
                os.environ.get("MAKE", "make"),
                "--no-print-directory",
                "test-ray",
                f"RAY_VERSION={version}",
            ],
            cwd=REPO,
            env=env,
            check=False,
        )
        seconds = round(time.monotonic() - began)
        text = Path(out.name).read_text()
    written = json.loads(text) if text else {}
    if "skipped" in written:
        return {"skipped": written["skipped"]}
    groups = written.get("groups", {})
    return {
        "passed": done.returncode == 0,
        "seconds": seconds,
        "groups": groups,
        "measured": time.strftime("%Y-%m-%d", time.gmtime()),
    }


def load_results() -> dict[str, dict[str, Any]]:
    """Every version's latest result, as kept by earlier runs."""
    if not RESULTS.exists():
        return {}
    stored: dict[str, dict[str, Any]] = json.loads(RESULTS.read_text())
    return stored


def keep_result(version: str, result: dict[str, Any]) -> None:
    """Keep `version`'s result (replacing its earlier one), at once: a later crash loses none."""
    stored = load_results()
    stored[version] = result
    RESULTS.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")


def _cells(results: dict[str, dict[str, Any]], versions: list[str]) -> dict[str, list[str]]:
    """Each row's cells; a version without a result is "not run" in every row."""
    rows: dict[str, list[str]] = {}
    for group in GROUPS:
        rows[group] = [
            results[v]["groups"].get(group, "?") if v in results else "not run" for v in versions
        ]
    rows["whole suite (`make test-ray`)"] = [
        ("passed" if results[v]["passed"] else "**FAILED**") if v in results else "not run"
        for v in versions
    ]
    rows["time (min:s)"] = [
        f"{results[v]['seconds'] // 60}:{results[v]['seconds'] % 60:02d}" if v in results else "-"
        for v in versions
    ]
    rows["measured on"] = [
        results[v].get("measured", "?") if v in results else "-" for v in versions
    ]
    return rows


def table(results: dict[str, dict[str, Any]], versions: list[str] | None = None) -> str:
    """Markdown: one row per field group, one column per version."""
    versions = list(results) if versions is None else versions
    lines = [
        "| field group | " + " | ".join(versions) + " |",
        "|---|" + "---|" * len(versions),
    ]
    for row, cells in _cells(results, versions).items():
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_between_markers(path: Path, text: str) -> None:
    """Replace what is between BEGIN and END in `path` (both must be there)."""
    doc = path.read_text()
    head, begin, rest = doc.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise SystemExit(f"{path}: the markers {BEGIN!r} ... {END!r} are missing")
    stamp = time.strftime("%Y-%m-%d", time.gmtime())
    body = (
        f"\n\nWritten {stamp} by `make test-ray-matrix` (each version's latest run):\n\n{text}\n\n"
    )
    path.write_text(head + begin + body + end + tail)


def main() -> int:
    """Run the versions given; print (and with --write-docs, write) the table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--matrix", help="the table's versions, space-separated")
    parser.add_argument("versions", nargs="*")
    args = parser.parse_args()
    results: dict[str, dict[str, Any]] = {}
    for version in args.versions:
        print(f"=== Ray {version}", flush=True)
        result = run_version(version)
        if "skipped" in result:
            # Loud, and never kept: the tables go on showing the version's last real run.
            print(f"=== Ray {version}: SKIPPED: {result['skipped']}", flush=True)
            continue
        results[version] = result
        keep_result(version, result)
        print(f"=== Ray {version}: {result}", flush=True)
    columns = args.matrix.split() if args.matrix else list(results)
    text = table({**load_results(), **results}, columns)
    print(text)
    if args.write_docs:
        for doc in (REPO / "docs" / "real-ray.md", REPO / "README.md"):
            write_between_markers(doc, text)
    return 0 if all(r["passed"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
