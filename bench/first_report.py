"""Time from `ray start --head` to usagestatsd's first complete report, against a real Ray.

The arrangement an operator sets up (docs/beside-ray.md): usagestatsd runs first with its
intake on a loopback port, Ray is started with RAY_USAGE_STATS_REPORT_URL pointing at it
(Ray's own interval, 3600 s, as by default), the provider runs beside Ray. Measured:
`ray start` begins -> the session directory appears -> usagestatsd notices it -> Ray's
first report reaches the intake -> usagestatsd's first report reaches the endpoint.
Printed beside the times: whether session_id is the cluster id, how many of Ray's usage
tags the report carries (the provider's fields) and how many fields are null.

    .venv/bin/python bench/first_report.py [--runs N]   (RAY_PYTHON: Ray's Python;
    default: the cached Ray venv of `make test-ray`, else the cached 2.60.0 one)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.ray.harness import (  # noqa: E402
    Daemons,
    RayHead,
    free_port,
    set_subreaper,
)
from tests.support.servers import ThreadedEndpoint  # noqa: E402

RAY_PYTHONS = (
    "/var/cache/usagestatsd-ray/venv/bin/python",  # mk/ray.mk's RAY_VENV
    "/var/cache/usagestatsd-ray/2.60.0/venv/bin/python",
)


def _event_time(lines: list[str], name: str) -> float | None:
    """The wall time (epoch s) of the first JSON log event called `name`."""
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == name:
            stamp = str(event.get("timestamp", "")).replace("Z", "+00:00")
            return datetime.fromisoformat(stamp).timestamp()
    return None


def one_run(python: str) -> dict[str, float]:
    """One cold `ray start` with usagestatsd routed; seconds from its start to each step."""
    endpoint = ThreadedEndpoint()
    port = free_port()
    head = RayHead(python, f"http://127.0.0.1:{port}/", 3600)
    daemons = Daemons(head, 3600)
    try:
        env = daemons.env(endpoint.url, USAGESTATSD_RAY_INTAKE=f"127.0.0.1:{port}")
        daemon = daemons.start(env)
        daemon.wait_for("beside_ray.intake_listening")
        head.start_provider()
        began_wall, began = time.time(), time.monotonic()
        head.start()
        deadline = began + 240
        while endpoint.count() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        first = time.monotonic() - began
        if endpoint.count() < 1:
            raise RuntimeError("no report within 240 s:\n" + "\n".join(daemon.lines[-20:]))
        body = endpoint.bodies()[0]
        cluster_id = head.dashboard_json("/cluster_id")["data"]["clusterId"]
        # The provider's fields: the cluster id as session_id and Ray's usage tags.
        steps = {
            "first report": round(first, 1),
            "session_id is the cluster id": float(body["session_id"] == cluster_id),
            "usage tags": float(len(body["extra_usage_tags"] or {})),
            "null fields": float(sum(v is None for v in body.values())),
        }
        for name in ("session.found", "beside_ray.report_absorbed"):
            when = _event_time(daemon.lines, name)
            if when is not None:
                steps[name] = round(when - began_wall, 1)
        return steps
    finally:
        daemons.stop_all()
        head.close()
        endpoint.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    python = os.environ.get("RAY_PYTHON") or next(
        (p for p in RAY_PYTHONS if Path(p).exists()), RAY_PYTHONS[0]
    )
    set_subreaper(True)  # Ray's processes stay our descendants: we stop only ours
    try:
        for i in range(args.runs):
            print(f"run {i + 1}: {one_run(python)}", flush=True)
    finally:
        set_subreaper(False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
