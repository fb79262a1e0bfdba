"""Record what one Ray version serves, into tests/data/ray-<version>/ (make record-ray).

Starts a real head with the given Ray venv (as tests/ray/harness.py does: private temp
root, loopback, stopped by pid), then saves, scrubbed of anything naming this host:

- `layout.json`: the session's `sockets/` entries and the dashboard's command line shape;
- `dash_report_cluster_metadata.json`, `dash_report_cluster_status.json`,
  `dash_job_list.json`: the dashboard's replies (over its Unix sockets where they exist,
  else over HTTP on TCP);
- `provider_usage.json`: the provider's `GET /v1/usage` with a job running;
- `report_payload.json`: the report Ray's own reporter sent.

Usage: RAY_PYTHON=<venv>/bin/python .venv/bin/python -m tests.ray.record [--out DIR]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.ray.harness import REPO, RayHead, set_subreaper
from tests.support.poll import wait_until
from tests.support.servers import ThreadedEndpoint

PATHS = (
    ("dash_report_cluster_metadata.json", "dash_ReportHead", "/api/v0/cluster_metadata"),
    ("dash_report_cluster_status.json", "dash_ReportHead", "/api/cluster_status"),
    ("dash_job_list.json", "dash_JobHead", "/api/jobs/"),
)


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(self.unix_path)


def get(conn: http.client.HTTPConnection, path: str) -> Any:
    """GET `path`, decoded JSON (raises on a non-200)."""
    try:
        # Ray 2.9's dashboard answers 500 to a request without a User-Agent.
        conn.request("GET", path, headers={"User-Agent": "usagestatsd-record"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{path}: HTTP {resp.status}")
        return json.loads(body)
    finally:
        conn.close()


def dashboard_get(head: RayHead, session: Path, socket_name: str, path: str) -> Any:
    """Over the Unix socket when this version has it, else the dashboard's TCP port."""
    unix = session / "sockets" / socket_name
    if unix.exists():
        return get(_Unix(str(unix)), path)
    return get(http.client.HTTPConnection("127.0.0.1", head.dashboard_port, timeout=10), path)


def scrub(text: str, head: RayHead) -> str:
    """Replace this host's names and addresses and the temp root with neutral ones."""
    host = socket.gethostname()
    text = text.replace(str(head.base), "/tmp/ray-test")
    if len(host) > 2:
        text = re.sub(rf"\b{re.escape(host)}\b", "vm", text)
    # Any non-loopback IPv4 address becomes a documentation address.
    return re.sub(
        r"\b(?!127\.)(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\b",
        lambda m: m.group(0) if m.group(0).count(".") != 3 else "192.0.2.2",
        text,
    )


def dashboard_cmdline(head: RayHead) -> list[str]:
    """The dashboard process's arguments, with paths and ports made neutral."""
    for pid in head.ray_pids():
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode() for a in args if a]
        if any(w.endswith("dashboard/dashboard.py") for w in words):
            return words
    return []


def main() -> int:
    """Record one version's replies."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    python = os.environ["RAY_PYTHON"]
    version = subprocess.run(
        [python, "-c", "import ray; print(ray.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    out: Path = args.out or REPO / "tests" / "data" / f"ray-{version}"
    out.mkdir(parents=True, exist_ok=True)
    set_subreaper(True)
    receiver = ThreadedEndpoint()
    head = RayHead(python, receiver.url, 5)
    began = time.monotonic()
    try:
        session = head.start()
        print(f"ray {version}: started in {time.monotonic() - began:.1f} s", file=sys.stderr)
        head.start_provider()
        layout = {
            "ray_version": version,
            "sockets": sorted(p.name for p in (session / "sockets").iterdir()),
            "dashboard_cmdline": dashboard_cmdline(head),
        }

        def has_usage() -> bool:
            try:
                doc = dashboard_get(head, session, "dash_ReportHead", "/api/cluster_status")
                return bool(doc["data"]["clusterStatus"]["loadMetricsReport"]["usage"])
            except (OSError, RuntimeError, KeyError, TypeError):
                return False  # the dashboard is still starting

        wait_until(has_usage, 60, "the autoscaler's first usage report")
        head.submit_job()
        submitted_at = len(receiver.bodies())

        def shows_job() -> bool:
            bodies = receiver.bodies()
            if any(b.get("total_num_running_jobs") == 1 for b in bodies):
                return True
            # Ray 1.13 reports no running jobs: two reports after the submission, then.
            old = bodies and "total_num_running_jobs" not in bodies[-1]
            return bool(old) and len(bodies) >= submitted_at + 2

        wait_until(
            shows_job,
            120,
            "Ray's report showing the job",
        )
        docs: dict[str, Any] = {}
        for name, sock, path in PATHS:
            try:
                docs[name] = dashboard_get(head, session, sock, path)
            except RuntimeError as exc:  # e.g. no /api/v0/cluster_metadata before Ray 2.3
                docs[name] = {"recorded_error": str(exc)}
        provider = session / "sockets" / "usagestatsd_provider"
        wait_until(
            provider.exists, 30, "the provider socket", lambda: "\n".join(head.provider_lines)
        )
        docs["provider_usage.json"] = get(_Unix(str(provider)), "/v1/usage")
        docs["report_payload.json"] = receiver.bodies()[-1]
        docs["layout.json"] = layout
        for name, doc in docs.items():
            text = scrub(json.dumps(doc, indent=1, sort_keys=True), head)
            (out / name).write_text(text + "\n")
        (out / "provider_log.txt").write_text(scrub("\n".join(head.provider_lines), head) + "\n")
        print(f"ray {version}: recorded into {out}", file=sys.stderr)
    finally:
        head.close()
        receiver.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
