"""The intake's accept latency (connect, POST, answer) while many loopback connections are held.

    .venv/bin/python -m bench --intake-accept                         # this worktree's code
    .venv/bin/python -m bench.intake_accept --code /tmp/old --held 20000 --samples 5  # old code

A real daemon (`python -m usagestatsd run`, from `--code`) listens on a free loopback intake.
Holder processes (HOLDERS of them, each with its own listener, RLIMIT_NOFILE raised to its
hard limit) open `--held` loopback connections in all and keep both ends; then `--samples`
reports are POSTed to the intake one after the other, as Ray's reporter does, and the time
from connect to the answer's status line is recorded. Prints median, 95th percentile and
maximum, with nothing held and with the connections held. The target: under 50 ms held.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import socket
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from multiprocessing.context import ForkProcess
from pathlib import Path

from tests.support.processes import daemon_env, end_process, start_daemon

HOLDERS = 4  # each holds both ends of its share: 2 descriptors per connection
ANSWER_TIMEOUT_S = 60.0
BODY = json.dumps({"session_start_timestamp_ms": 0, "seq_number": 0}).encode()
TARGET_MS = 50.0


def hold(count: int, done: Connection) -> None:
    """A holder process: `count` connections to its own listener, held until told to stop."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = socket.create_server(("127.0.0.1", 0), backlog=4096)
    held = []
    for _ in range(count):
        held.append(socket.create_connection(server.getsockname()))
        held.append(server.accept()[0])
    done.send(len(held) // 2)
    done.recv()  # any message: stop


def one_report(port: int) -> float:
    """Milliseconds from connect to the answer's status line."""
    head = (
        "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode()
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT_S) as s:
        s.sendall(head + BODY)
        reply = b""
        while b"\r\n" not in reply:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    if not reply.startswith(b"HTTP/1.1 "):
        raise RuntimeError(f"no answer from the intake: {reply[:40]!r}")
    return (time.perf_counter() - started) * 1000


def figures(samples: list[float]) -> dict[str, float]:
    """Median, 95th percentile and maximum, in ms."""
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"median_ms": statistics.median(ordered), "p95_ms": p95, "max_ms": ordered[-1]}


def measure(code: Path, held: int, samples: int) -> dict[str, dict[str, float]]:
    """The figures with nothing held, then with `held` connections held."""
    base = Path(tempfile.mkdtemp(prefix="usd-bench-intake-", dir="/tmp"))
    env = daemon_env(
        base / "ray", base / "state", "http://127.0.0.1:9/", USAGESTATSD_RAY_INTAKE="127.0.0.1:0"
    )
    env["PYTHONPATH"] = str(code)
    daemon = start_daemon(env)
    pipes: list[tuple[ForkProcess, Connection]] = []
    try:
        url = json.loads(daemon.wait_for("beside_ray.intake_listening"))["url"]
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        out = {"idle": figures([one_report(port) for _ in range(samples)])}
        context = multiprocessing.get_context("fork")
        for _ in range(HOLDERS):
            ours, theirs = context.Pipe()
            process = context.Process(target=hold, args=(held // HOLDERS, theirs), daemon=True)
            process.start()
            pipes.append((process, ours))
        total = sum(pipe.recv() for _, pipe in pipes)
        out[f"{total} held"] = figures([one_report(port) for _ in range(samples)])
        return out
    finally:
        for process, pipe in pipes:
            pipe.send("stop")
            process.join(10)
        end_process(daemon.proc, 5)


def main(argv: list[str] | None = None) -> int:
    """Print the figures; exit status 1 when the held median misses the target."""
    parser = argparse.ArgumentParser(prog="python -m bench.intake_accept")
    parser.add_argument("--code", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--held", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=50)
    args = parser.parse_args(argv)
    result = measure(args.code.resolve(), args.held, args.samples)
    for name, row in result.items():
        print(
            f"intake accept, {name}: median {row['median_ms']:.2f} ms, "
            f"p95 {row['p95_ms']:.2f} ms, max {row['max_ms']:.2f} ms "
            f"({args.samples} reports; code {args.code}; pid {os.getpid()})"
        )
    held = [row for name, row in result.items() if name != "idle"]
    return 0 if held and held[0]["median_ms"] < TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
