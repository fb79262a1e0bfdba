"""Soak: at least 20,000 report cycles at a tiny interval against flaky local servers.

`make soak` runs this script. It serves a Ray-like session on real Unix sockets (the recorded
Ray 2.60 dashboard answers plus a provider socket) and a report endpoint on 127.0.0.1, each
failing 10% of requests at random (HTTP 500/503, invalid JSON, a reset connection), starts a
real `usagestatsd run` process at the smallest interval, and samples the daemon's resident
memory, open file descriptors and asyncio tasks. It fails (exit 1) when memory grows by 2 MB
or more from cycle 1,000 to the end, when descriptors or tasks grow, or when a cycle crashes.

The task count comes from a sampler thread in the daemon process: the process runs
`usagestatsd.cli.commands.main` unchanged, under an event-loop policy that only remembers the loop,
and every second the thread asks that loop (thread-safely) for `len(asyncio.all_tasks())`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from usagestatsd.demo import make_session_dir, recorded_responses

FAIL_RATE = 0.10
# Descriptors or tasks a single cycle may hold at once (sockets, gathers, retries, waiters).
BUSY_BOUND = 32
PROVIDER_DOC = json.dumps(
    {
        "protocol_version": 1,
        "cluster_id": "0f" * 28,
        "library_usages": ["core", "train", "tune"],
        "extra_usage_tags": {"dashboard_used": "false", "num_actors": "3"},
        "hardware_usages": ["NVIDIA A100"],
    }
).encode()

# Runs in the daemon process: usagestatsd's own CLI, plus a thread that samples the task count.
INSTRUMENTED = """
import asyncio, json, sys, threading, time
loops = []
class Remembering(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self):
        loop = super().new_event_loop()
        loops.append(loop)
        return loop
asyncio.set_event_loop_policy(Remembering())
def emit():
    line = json.dumps({"event": "soak.tasks", "tasks": len(asyncio.all_tasks())})
    sys.stderr.write(line + "\\n")
    sys.stderr.flush()
def sample():
    while True:
        time.sleep(1.0)
        if loops and not loops[-1].is_closed():
            try:
                loops[-1].call_soon_threadsafe(emit)
            except RuntimeError:
                return
threading.Thread(target=sample, daemon=True).start()
from usagestatsd.cli.commands import main
sys.exit(main(["run", "--log-format", "json"]))
"""


@dataclass
class Counts:
    """What the flaky servers did."""

    requests: int = 0
    failed: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    def fail(self, kind: str) -> None:
        """Count one injected failure."""
        self.failed += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1


class Flaky:
    """aiohttp handlers that fail FAIL_RATE of requests at random."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.counts = Counts()

    def failure(
        self, request: web.Request, statuses: tuple[int, ...], kinds: tuple[str, ...]
    ) -> web.Response | None:
        """None (answer normally) 90% of the time, else a failure of a random kind."""
        self.counts.requests += 1
        if self.rng.random() >= FAIL_RATE:
            return None
        kind = self.rng.choice(kinds)
        self.counts.fail(kind)
        if kind == "status":
            return web.Response(status=self.rng.choice(statuses), text="injected failure")
        if kind == "garbage":
            return web.Response(body=b'{"truncated": ', content_type="application/json")
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=500)

    def socket_app(self, routes: dict[str, bytes]) -> web.Application:
        """A dashboard-like app on a Unix socket."""

        async def handle(request: web.Request) -> web.Response:
            failed = self.failure(request, (500, 503), ("status", "garbage", "reset"))
            if failed is not None:
                return failed
            body = routes.get(request.path)
            if body is None:
                return web.Response(status=404)
            return web.Response(body=body, content_type="application/json")

        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", handle)
        return app

    def endpoint_app(self, received: list[int]) -> web.Application:
        """The report endpoint: keeps each received seq_number."""

        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            failed = self.failure(request, (500, 502, 503, 429), ("status", "reset"))
            if failed is not None:
                return failed
            received.append(int(json.loads(body)["seq_number"]))
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_post("/{tail:.*}", handle)
        return app


def level(values: list[int]) -> tuple[int, int, int]:
    """(idle floor, median, busy ceiling) of sampled counts."""
    if not values:
        return (0, 0, 0)
    ordered = sorted(values)
    return ordered[0], ordered[len(ordered) // 2], ordered[-1]


def rss_kb(pid: int) -> int:
    """VmRSS of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def open_fds(pid: int) -> int:
    """How many descriptors a process has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Sample:
    """One measurement of the daemon."""

    cycle: int
    rss_kb: int
    fds: int
    tasks: int | None


@dataclass
class Watch:
    """Reads the daemon's JSON log lines in a thread and keeps counts, not lines."""

    proc: subprocess.Popen[bytes]
    events: dict[str, int] = field(default_factory=dict)
    cycles: int = 0
    tasks: int | None = None
    task_samples: list[tuple[int, int]] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)

    def pump(self) -> None:
        """Consume stderr until the process ends."""
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            try:
                event: dict[str, Any] = json.loads(raw)
            except ValueError:
                self.other.append(raw.decode(errors="replace").rstrip())
                continue
            name = str(event.get("event"))
            self.events[name] = self.events.get(name, 0) + 1
            if name in ("report.sent", "report.failed"):
                self.cycles += 1
            elif name == "soak.tasks":
                self.tasks = int(event["tasks"])
                self.task_samples.append((self.cycles, self.tasks))
            elif name == "cycle.crashed":
                self.crashes.append(raw.decode(errors="replace").rstrip())


async def serve(flaky: Flaky, session: Path, received: list[int]) -> list[web.AppRunner]:
    """Start the flaky sockets and the endpoint; returns the runners (endpoint last)."""
    runners = []
    routes = {name: dict(paths) for name, paths in recorded_responses().items()}
    routes["usagestatsd_provider"] = {"/v1/usage": PROVIDER_DOC}
    for name, paths in routes.items():
        runner = web.AppRunner(flaky.socket_app(paths), access_log=None)
        await runner.setup()
        await web.UnixSite(runner, str(session / "sockets" / name)).start()
        runners.append(runner)
    runner = web.AppRunner(flaky.endpoint_app(received), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    runners.append(runner)
    return runners


async def soak(cycles: int, interval: str, seed: int, history_max_bytes: int | None) -> int:
    """Run the soak; returns the exit status."""
    root = Path(tempfile.mkdtemp(prefix="usd-soak-", dir="/tmp"))
    temp_root = root / "ray"
    session = make_session_dir(temp_root)
    flaky = Flaky(random.Random(seed))
    received: list[int] = []
    runners = await serve(flaky, session, received)
    port = runners[-1].addresses[0][1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "USAGESTATSD_"))}
    env.pop("NOTIFY_SOCKET", None)
    env.update(
        {
            "RAY_USAGE_STATS_ENABLED": "1",
            "USAGESTATSD_TEMP_ROOT": str(temp_root),
            "USAGESTATSD_STATE_DIR": str(root / "state"),
            "RAY_USAGE_STATS_REPORT_URL": f"http://127.0.0.1:{port}/",
            "RAY_USAGE_STATS_REPORT_INTERVAL_S": interval,
            "USAGESTATSD_RETRY_MAX_ATTEMPTS": "2",
            "USAGESTATSD_RETRY_INITIAL_DELAY_S": "0.001",
            "USAGESTATSD_RETRY_MAX_DELAY_S": "0.002",
            "USAGESTATSD_SOCKET_TIMEOUT_S": "2",
            "USAGESTATSD_HTTP_TIMEOUT_S": "2",
            # Ray's-reporter intake on a free loopback port, not the fixed default one.
            "USAGESTATSD_RAY_INTAKE": "127.0.0.1:0",
            "HOME": str(root / "home"),
        }
    )
    if history_max_bytes is not None:
        env["USAGESTATSD_HISTORY_MAX_BYTES"] = str(history_max_bytes)
    proc = subprocess.Popen(
        [sys.executable, "-c", INSTRUMENTED],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    print(
        f"soak: interval {interval} s, {FAIL_RATE:.0%} of requests failing, "
        f"history cap {history_max_bytes or 'default'} bytes, target {cycles} cycles",
        flush=True,
    )
    watch = Watch(proc)
    threading.Thread(target=watch.pump, daemon=True).start()
    samples: list[Sample] = []
    started = time.monotonic()
    baseline: Sample | None = None
    next_print = 1000
    try:
        while watch.cycles < cycles:
            await asyncio.sleep(0.5)
            if proc.poll() is not None:
                print("soak: the daemon exited early:", *watch.other[-20:], sep="\n")
                return 1
            sample = Sample(watch.cycles, rss_kb(proc.pid), open_fds(proc.pid), watch.tasks)
            samples.append(sample)
            if baseline is None and watch.cycles >= 1000:
                baseline = sample
            if watch.cycles >= next_print:
                rate = watch.cycles / (time.monotonic() - started)
                print(
                    f"soak: cycle {watch.cycles:6d}  rss {sample.rss_kb} KiB  fds {sample.fds}  "
                    f"tasks {sample.tasks}  ({rate:.1f} cycles/s)",
                    flush=True,
                )
                next_print += 1000
        final = Sample(watch.cycles, rss_kb(proc.pid), open_fds(proc.pid), watch.tasks)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for runner in runners:
            await runner.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    return judge(watch, flaky, received, samples, baseline, final, started)


def judge(
    watch: Watch,
    flaky: Flaky,
    received: list[int],
    samples: list[Sample],
    baseline: Sample | None,
    final: Sample,
    started: float,
) -> int:
    """Print the figures and decide pass or fail."""
    assert baseline is not None
    span = final.cycle - baseline.cycle
    early = [s for s in samples if baseline.cycle <= s.cycle < baseline.cycle + span // 4]
    late = [s for s in samples if s.cycle >= final.cycle - span // 4]
    growth_kb = final.rss_kb - baseline.rss_kb
    # Sampled at random moments: a cycle in flight holds a few sockets and tasks. Compare the
    # first and the last quarter of the run by (idle floor, median, busy ceiling).
    early_fds = level([s.fds for s in early])
    late_fds = level([s.fds for s in late])
    early_tasks = level(
        [t for c, t in watch.task_samples if baseline.cycle <= c < baseline.cycle + span // 4]
    )
    late_tasks = level([t for c, t in watch.task_samples if c >= final.cycle - span // 4])
    elapsed = time.monotonic() - started
    print(f"soak: {watch.cycles} cycles in {elapsed:.0f}s ({watch.cycles / elapsed:.1f}/s)")
    print(
        f"soak: injected failures {flaky.counts.failed} of {flaky.counts.requests} requests "
        f"({100 * flaky.counts.failed / max(1, flaky.counts.requests):.1f}%) {flaky.counts.by_kind}"
    )
    print(f"soak: events {dict(sorted(watch.events.items()))}")
    print(f"soak: reports accepted by the endpoint {len(received)}")
    print(
        f"soak: rss at cycle {baseline.cycle}: {baseline.rss_kb} KiB; at cycle {final.cycle}: "
        f"{final.rss_kb} KiB; growth {growth_kb} KiB; "
        f"peak after cycle 1,000 {max(s.rss_kb for s in samples if s.cycle >= baseline.cycle)} KiB"
    )
    print(
        f"soak: open fds (idle/median/busy) first quarter {early_fds}, last quarter {late_fds}; "
        f"at cycle {baseline.cycle}: {baseline.fds}, at the end: {final.fds}"
    )
    print(
        f"soak: asyncio tasks (idle/median/busy) first quarter {early_tasks}, "
        f"last quarter {late_tasks}"
    )
    failures = []
    if growth_kb >= 2048:
        failures.append(f"memory grew by {growth_kb} KiB")
    for what, first, last in (
        ("descriptors", early_fds, late_fds),
        ("tasks", early_tasks, late_tasks),
    ):
        # A leak raises the idle floor and the median; the busy ceiling only has to stay bounded
        # (it depends on what a cycle has in flight at the sampled moment).
        if last[0] > first[0] or last[1] > first[1] + 1 or last[2] > BUSY_BOUND:
            failures.append(f"{what} grew from {first} to {last}")
    if watch.crashes:
        failures.append(f"{len(watch.crashes)} cycles crashed: {watch.crashes[0]}")
    if received != sorted(received):
        failures.append("seq_number went backwards at the endpoint")
    for failure in failures:
        print(f"soak: FAIL: {failure}")
    print("soak: PASS" if not failures else "soak: FAILED")
    return 1 if failures else 0


def main() -> int:
    """Command line: --cycles (20,000), --interval (0.05 s, the smallest allowed), --seed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cycles", type=int, default=20_000)
    parser.add_argument("--interval", default="0.05")
    parser.add_argument("--seed", type=int, default=20261128)
    parser.add_argument(
        "--history-max-bytes",
        type=int,
        default=None,
        help="the report history's size cap (default: the daemon's own, 10 MiB)",
    )
    args = parser.parse_args()
    if args.cycles < 2000:
        parser.error("--cycles must be at least 2000 (memory is measured from cycle 1,000)")
    return asyncio.run(soak(args.cycles, args.interval, args.seed, args.history_max_bytes))


if __name__ == "__main__":
    sys.exit(main())
