"""`make bench-collector` (second part): the collector under hostile senders.

    .venv/bin/python bench/collector_hostile.py [--honest 300] [--json FILE]

1. The privacy guard's worst case: `validate()` (size, nesting, schema, limits, guard) on
   crafted reports that fill every string the schema allows with patterns that are costly
   for pattern matching (dotted labels, hyphens, digits, '@'), within the size cap.
2. An honest sender's latency (one report at a time, p50/p99/max) through the real
   `usagestatsd-collector serve` process on SQLite while 4 hostile senders post those
   worst-case reports as fast as they are answered, and 1,000 idle connections are held
   (reopened as the collector closes them). Only 127.0.0.1; every process is stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import resource
import select
import socket
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))

from tests.collector.harness import running_collector, sample_report  # noqa: E402
from usagestatsd.collector.validate import Accepted, validate  # noqa: E402
from usagestatsd.contract.guard import forget_verdicts  # noqa: E402

MAX_BYTES = 16 << 10
IDLE = 1000
HOSTILE_SENDERS = 4
PATTERNS = {
    "dotted labels": "a." * 511 + "!",
    "hyphenated labels": "a-" * 511 + "!",
    "digits and dots": "1.2." * 255 + "x",
    "at signs": "a@" * 511 + "!",
    "slashes": "/a" * 511 + ":",
    "colons": "a:" * 511 + "!",
}


def crafted(pattern: str, seq: int = 0) -> bytes:
    """A report whose strings are all `pattern`, as many tags as fit the size cap."""
    body = sample_report("ab" * 16, seq)
    for name in ("ray_version", "python_version", "os", "cloud_provider", "session_start"):
        if isinstance(body.get(name), str):
            body[name] = pattern
    body["library_usages"] = [pattern]
    body["extra_usage_tags"] = {}
    raw = json.dumps(body).encode()
    tags: dict[str, str] = {}
    while True:
        tags[f"t{len(tags)}"] = pattern
        body["extra_usage_tags"] = tags
        bigger = json.dumps(body).encode()
        if len(bigger) > MAX_BYTES:
            return raw
        raw = bigger


def guard_figures() -> dict[str, Any]:
    """validate() per crafted report, ms (median of 5), and what it did with it."""
    out: dict[str, Any] = {}
    for label, pattern in PATTERNS.items():
        raw = crafted(pattern)
        times = []
        result: Any = None
        for _ in range(5):
            forget_verdicts()  # a hostile sender's values are new each time
            started = time.perf_counter()
            result = validate(raw, MAX_BYTES)
            times.append((time.perf_counter() - started) * 1000)
        kind = "accepted" if isinstance(result, Accepted) else f"rejected {result.reason}"
        out[label] = {"ms": round(statistics.median(times), 2), "bytes": len(raw), "result": kind}
    real = json.dumps(sample_report("ab" * 16, 0)).encode()
    started = time.perf_counter()
    for _ in range(200):
        validate(real, MAX_BYTES)
    out["a real report"] = {"ms": round((time.perf_counter() - started) * 5, 3), "bytes": len(real)}
    return out


def _hold_idle(port: int, count: int, stop: Any) -> None:
    """Keep `count` idle connections open, reopening those the collector closes."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held: list[socket.socket] = []
    while not stop.is_set():
        while len(held) < count:
            try:
                held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            except OSError:
                break
        readable, _, _ = select.select(held, [], [], 0.2)
        for sock in readable:
            with contextlib.suppress(OSError):
                if sock.recv(4096):
                    continue
            sock.close()
            held.remove(sock)


def _hostile_sender(url: str, body: bytes, stop: Any) -> None:
    while not stop.is_set():
        request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        with contextlib.suppress(OSError, urllib.error.HTTPError):
            urllib.request.urlopen(request, timeout=30).read()


@contextlib.contextmanager
def hostile(url: str, port: int, body: bytes, idle: int, senders: int) -> Iterator[None]:
    """`idle` idle connections and `senders` hostile senders, in processes of their own."""
    context = multiprocessing.get_context("fork")
    stop = context.Event()
    workers = [context.Process(target=_hold_idle, args=(port, idle, stop))] if idle else []
    workers += [
        context.Process(target=_hostile_sender, args=(url, body, stop)) for _ in range(senders)
    ]
    for worker in workers:
        worker.start()
    try:
        time.sleep(3)  # the idle connections open, the senders get going
        yield
    finally:
        stop.set()
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.kill()


def honest_latency(url: str, count: int) -> dict[str, Any]:
    """`count` real reports, one at a time: p50/p99/max ms and the statuses seen."""
    times: list[float] = []
    statuses: dict[int, int] = {}
    for seq in range(count):
        body = json.dumps(sample_report("cd" * 16, seq)).encode()
        request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                status = answer.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        times.append((time.perf_counter() - started) * 1000)
        statuses[status] = statuses.get(status, 0) + 1
        time.sleep(0.02)
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 1),
        "p99_ms": round(times[int(len(times) * 0.99) - 1], 1),
        "max_ms": round(times[-1], 1),
        "statuses": statuses,
    }


def main() -> int:
    """Both figures, as JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--honest", type=int, default=300)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--idle", type=int, default=IDLE)
    parser.add_argument("--senders", type=int, default=HOSTILE_SENDERS)
    opts = parser.parse_args()
    results: dict[str, Any] = {"load_average_at_start": os.getloadavg()}
    guard = guard_figures()
    results["guard_worst_case"] = guard
    print(json.dumps(results), flush=True)
    worst = max(PATTERNS, key=lambda label: guard[label]["ms"])
    with (
        tempfile.TemporaryDirectory(prefix="usd-bench-") as tmp,
        running_collector(Path(tmp) / "state") as c,
    ):
        port = int(c.url.rsplit(":", 1)[1].strip("/"))
        results["quiet"] = honest_latency(c.url, 100)
        with hostile(c.url, port, crafted(PATTERNS[worst]), opts.idle, opts.senders):
            results["under_attack"] = honest_latency(c.url, opts.honest)
            results["open_descriptors"] = len(os.listdir(f"/proc/{c.proc.pid}/fd"))
        results["attack"] = f"{opts.senders} senders of '{worst}' reports, {opts.idle} idle"
        results["log_lines"] = len(c.lines)
    results["load_average_at_end"] = os.getloadavg()
    text = json.dumps(results, indent=1)
    print(text)
    if opts.json:
        opts.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
