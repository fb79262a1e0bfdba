"""What a hostile (trusted) source or cluster config costs the daemon.

    .venv/bin/python bench/hostile_sources.py                 # this worktree's code
    cd /tmp/old && /path/.venv/bin/python /path/bench/hostile_sources.py --code .   # old code

Runs the real daemon (`python -m usagestatsd run`, from `--code`) against a demo session
whose dash_JobHead is served, as root, by a raw server answering 32 MiB of `[{},{},...]`,
or with a cluster config of 1 MiB of costly YAML, and prints:
- peak extra RSS: VmHWM once the reports have come in, minus VmHWM after two healthy
  cycles; and VmRSS at the end (what the daemon keeps);
- SIGTERM: seconds from SIGTERM to exit, sent while the hostile answer is being handled;
- the daemon's own CPU seconds per cycle.
Needs root (the attack servers fork). Figures go to docs/security.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import seconds_to_exit
from tests.faults.test_trust import (
    COSTLY_LINE,
    EMPTY_OBJECTS,
    cpu_seconds,
    fake_dashboard,
    vm_kib,
)
from tests.support.hostile import running_as
from tests.support.poll import until
from tests.support.processes import daemon_env, start_daemon
from tests.support.servers import ScriptedEndpoint
from usagestatsd.demo import DemoCluster, make_session_dir, recorded, recorded_responses


async def row(kind: str, code: Path) -> dict[str, float]:
    """One scenario from start to SIGTERM; its figures."""
    base = Path(tempfile.mkdtemp(prefix="usd-bench-", dir="/tmp"))
    root = base / "ray"
    session = make_session_dir(root)
    answers = recorded_responses()
    del answers["dash_JobHead"]
    cluster = DemoCluster(session, answers)
    await cluster.start()
    endpoint = ScriptedEndpoint()
    await endpoint.start()
    jobs = session / "sockets" / "dash_JobHead"
    extra = {}
    if kind == "yaml":
        config = base / "ray_bootstrap_config.yaml"
        extra["USAGESTATSD_CLUSTER_CONFIG"] = str(config)
    env = daemon_env(root, base / "state", endpoint.url, **extra)
    env["PYTHONPATH"] = str(code)
    os.chdir(code)
    out: dict[str, float] = {}
    daemon = start_daemon(env)
    try:
        with running_as(fake_dashboard(jobs, recorded("dash_job_list.json")), uid=0):
            await until(lambda: len(endpoint.received) >= 2, 60)
        baseline = vm_kib(daemon.proc.pid, "VmHWM")
        cpu0, n0, t0 = cpu_seconds(daemon.proc.pid), len(endpoint.received), time.monotonic()
        jobs.unlink()
        body = EMPTY_OBJECTS if kind == "json" else recorded("dash_job_list.json")
        if kind == "yaml":
            config.write_bytes(COSTLY_LINE * ((1 << 20) // len(COSTLY_LINE)))
        with running_as(fake_dashboard(jobs, body), uid=0):
            with contextlib.suppress(AssertionError):  # too slow: the figures say so
                await until(lambda: len(endpoint.received) >= n0 + 3, 180)
            cycles = len(endpoint.received) - n0
            out["cycles"] = cycles
            out["wall_s"] = time.monotonic() - t0
            out["cpu_per_cycle_s"] = (cpu_seconds(daemon.proc.pid) - cpu0) / max(cycles, 1)
            out["peak_extra_rss_mb"] = (vm_kib(daemon.proc.pid, "VmHWM") - baseline) / 1024
            out["rss_kept_mb"] = vm_kib(daemon.proc.pid, "VmRSS") / 1024
            # SIGTERM in the middle of the next hostile cycle (the interval is 0.5 s).
            await asyncio.sleep(0.6)
            out["sigterm_s"] = await seconds_to_exit(daemon.proc)
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
        daemon.proc.wait()
        await cluster.stop()
        await endpoint.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--code", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--only", choices=["json", "yaml"])
    args = parser.parse_args()
    for kind in ["json", "yaml"] if args.only is None else [args.only]:
        figures = asyncio.run(row(kind, args.code.resolve()))
        print(kind, " ".join(f"{k}={v:.2f}" for k, v in figures.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
