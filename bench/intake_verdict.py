"""How long Ray's reporter waits for the intake's answer (docs/beside-ray.md).

The intake answers only once the daemon has decided whether it reports the session, and
Ray's reporter gives up after 10 s. Measured with a real daemon, its real intake and a demo
head on Unix sockets: Ray's first POST right after the daemon listens (before its first
look at the session: the POST pulls that first cycle forward and waits for its decision),
then a later POST (decided already), for a head it reports (200) and a Ray 1.12 head it
does not (503).

    .venv/bin/python bench/intake_verdict.py [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from tests.support.processes import await_line, intake_env, running_daemon  # noqa: E402
from tests.support.rayside import ray_report, recorded_json  # noqa: E402
from tests.support.servers import ScriptedEndpoint  # noqa: E402
from usagestatsd.demo import DemoCluster, make_session_dir, recorded_responses  # noqa: E402


async def _post(url: str) -> tuple[int, float]:
    began = time.monotonic()
    async with aiohttp.ClientSession() as http, http.post(url, data=ray_report(0)) as resp:
        await resp.read()
        return resp.status, (time.monotonic() - began) * 1000


async def one_run(ray_version: str) -> tuple[tuple[int, float], tuple[int, float]]:
    """The first and a later POST's (status, ms) against a head of `ray_version`."""
    base = Path(tempfile.mkdtemp(prefix="usd-bench-", dir="/tmp"))
    temp_root = base / "ray"
    temp_root.mkdir()
    responses = recorded_responses()
    metadata = recorded_json("dash_report_cluster_metadata.json")
    metadata["data"]["rayVersion"] = ray_version
    responses["dash_ReportHead"]["/api/v0/cluster_metadata"] = json.dumps(metadata).encode()
    cluster = DemoCluster(make_session_dir(temp_root), responses)
    endpoint = ScriptedEndpoint()
    await cluster.start()
    await endpoint.start()
    try:
        with running_daemon(intake_env(temp_root, base / "state", endpoint.url)) as daemon:
            url = json.loads(await await_line(daemon, "beside_ray.intake_listening"))["url"]
            return await _post(url), await _post(url)
    finally:
        await endpoint.stop()
        await cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    for version in ("2.60.0", "1.12.1"):
        runs = [await one_run(version) for _ in range(args.runs)]
        for label, index in (("first POST", 0), ("later POST", 1)):
            statuses = {r[index][0] for r in runs}
            ms = [r[index][1] for r in runs]
            print(
                f"Ray {version} head, {label}: HTTP {sorted(statuses)}, median "
                f"{statistics.median(ms):.0f} ms, max {max(ms):.0f} ms ({args.runs} runs)"
            )
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"load average at the end: {load}")


if __name__ == "__main__":
    asyncio.run(main())
