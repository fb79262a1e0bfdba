"""Run the real-Ray suite on several Ray versions, one at a time, and tabulate the result.

    python -m tests.ray.matrix [--write-docs] VERSION...

Each version is `make test-ray RAY_VERSION=<version>` (its cached venv, installed if
missing), timed. The field-by-field comparison of the first real-Ray test is collected
per version (equal / null / differs per field group). With --write-docs the table
replaces what is between the markers in docs/real-ray.md and README.md. Exits non-zero
when any version fails.
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
    """`make test-ray` for one version: passed, seconds, and the comparison by group."""
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
    groups = json.loads(text)["groups"] if text else {}
    return {"passed": done.returncode == 0, "seconds": seconds, "groups": groups}


def table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per field group, one column per version."""
    versions = list(results)
    lines = [
        "| field group | " + " | ".join(versions) + " |",
        "|---|" + "---|" * len(versions),
    ]
    for group in GROUPS:
        cells = [results[v]["groups"].get(group, "not run") for v in versions]
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    suite = ["passed" if results[v]["passed"] else "**FAILED**" for v in versions]
    lines.append("| whole suite (`make test-ray`) | " + " | ".join(suite) + " |")
    lines.append(
        "| time (min:s) | "
        + " | ".join(f"{r['seconds'] // 60}:{r['seconds'] % 60:02d}" for r in results.values())
        + " |"
    )
    return "\n".join(lines)


def write_between_markers(path: Path, text: str) -> None:
    """Replace what is between BEGIN and END in `path` (both must be there)."""
    doc = path.read_text()
    head, begin, rest = doc.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise SystemExit(f"{path}: the markers {BEGIN!r} ... {END!r} are missing")
    stamp = time.strftime("%Y-%m-%d", time.gmtime())
    body = f"\n\nMeasured {stamp} with `make test-ray-matrix`:\n\n{text}\n\n"
    path.write_text(head + begin + body + end + tail)


def main() -> int:
    """Run the versions given; print (and with --write-docs, write) the table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("versions", nargs="+")
    args = parser.parse_args()
    results: dict[str, dict[str, Any]] = {}
    for version in args.versions:
        print(f"=== Ray {version}", flush=True)
        results[version] = run_version(version)
        print(f"=== Ray {version}: {results[version]}", flush=True)
    text = table(results)
    print(text)
    if args.write_docs:
        for doc in (REPO / "docs" / "real-ray.md", REPO / "README.md"):
            write_between_markers(doc, text)
    return 0 if all(r["passed"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
