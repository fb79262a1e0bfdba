"""Load generator for the collector bench: N concurrent senders on 127.0.0.1, bounded.

Each sender keeps one HTTP/1.1 keep-alive connection and POSTs distinct schema-0.1 reports
(its own session_id, rising seq_number), waiting for each answer before the next, as a fleet
of heads would. It stops after `--seconds` or `--count` reports, whichever comes first, and
prints one JSON line: reports sent, statuses, elapsed seconds, latency percentiles.

    python bench/collector_load.py --port 18924 --senders 100 --seconds 10 --count 100000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

TEMPLATE = json.loads(
    (Path(__file__).parents[1] / "usagestatsd/demo/data/report_payload.json").read_text()
)


def _bodies(session_id: str) -> tuple[bytes, bytes]:
    """The report split around its seq_number, so each request costs one join."""
    body = dict(TEMPLATE, session_id=session_id, seq_number=987654321)
    head, tail = json.dumps(body).encode().split(b"987654321")
    return head, tail


async def _sender(
    port: int, deadline: float, budget: list[int], latencies: list[float], statuses: dict[int, int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head, tail = _bodies(uuid.uuid4().hex)
    seq = 0
    try:
        while time.monotonic() < deadline and budget[0] > 0:
            budget[0] -= 1
            body = head + str(seq).encode() + tail
            seq += 1
            request = (
                b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            started = time.perf_counter()
            writer.write(request)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            status = int(status_line.split()[1])
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def main(port: int, senders: int, seconds: float, count: int) -> dict[str, object]:
    """Run the senders; the figures."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    budget = [count]
    cpu_started = time.process_time()
    started = time.monotonic()
    deadline = started + seconds
    await asyncio.gather(
        *(_sender(port, deadline, budget, latencies, statuses) for _ in range(senders))
    )
    elapsed = time.monotonic() - started
    cpu = time.process_time() - cpu_started
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2)

    return {
        "sent": len(latencies),
        "elapsed_s": round(elapsed, 3),
        "per_s": round(len(latencies) / elapsed, 1),
        "statuses": statuses,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": round(latencies[-1] * 1000, 2) if latencies else 0.0,
        # The generator's own CPU: on a small machine it shares the cores with the server.
        "client_cpu_ms_per_report": round(cpu * 1000 / max(1, len(latencies)), 3),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--senders", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--count", type=int, default=100_000)
    args = parser.parse_args()
    result = asyncio.run(main(args.port, args.senders, min(args.seconds, 120), args.count))
    print(json.dumps(result))
    sys.exit(0)
