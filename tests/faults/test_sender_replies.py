"""An endpoint (or a proxy) answering with malformed HTTP never crashes a cycle.

Before the fix the parser's exception escaped the sender: every cycle crashed, the good
endpoint got the same seq number again and again, nothing reached the history and the
counters froze. Each malformed reply is now one failed attempt of that endpoint only.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.faults.helpers import named
from tests.support.poll import until
from tests.support.processes import daemon_env, running_daemon
from tests.support.servers import RawTcpServer, ScriptedEndpoint, read_whole_request
from usagestatsd.config.settings import Endpoint, RetryPolicy
from usagestatsd.cycle.sender import send_report
from usagestatsd.demo import DemoCluster

# What a hostile endpoint or proxy sends back after reading the report.
MALFORMED: dict[str, bytes] = {
    "bad status line": b"HTTP/1.1 OK200\r\nContent-Length: 0\r\n\r\n",
    "header over 8 KiB": b"HTTP/1.1 200 OK\r\nX-Big: "
    + b"a" * 9000
    + b"\r\nContent-Length: 0\r\n\r\n",
    "more than 128 headers": b"HTTP/1.1 200 OK\r\n"
    + b"".join(b"X-H%d: v\r\n" % n for n in range(200))
    + b"Content-Length: 0\r\n\r\n",
    "bad header token": b"HTTP/1.1 200 OK\r\nBad Header: x\r\nContent-Length: 0\r\n\r\n",
    "bad chunk size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"zz\r\nabc\r\n0\r\n\r\n",
    "duplicate Content-Length": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
    + b"Content-Length: 3\r\n\r\nok",
    "non-HTTP bytes": b"\x16\x03\x01\x00\xa5garbage\x00\xff\r\n\r\n",
}
# aiohttp 3.8.4 (Debian 12) takes these two as a valid 200; every version rejects the rest.
LENIENT_IN_OLD_AIOHTTP = {"more than 128 headers", "bad header token"}
POLICY = RetryPolicy(max_attempts=3, initial_delay_s=0.01, max_delay_s=0.02, budget_s=5)


def answer(data: bytes) -> Callable[[socket.socket], None]:
    """Read the whole report, then send `data` and close."""

    def behave(conn: socket.socket) -> None:
        read_whole_request(conn)
        conn.sendall(data)

    return behave


@pytest.mark.parametrize("name", list(MALFORMED))
async def test_malformed_reply_is_one_permanent_failure(name: str) -> None:
    """Each malformed reply is one failed, permanent attempt; the peer's bytes are not logged."""
    bad = RawTcpServer([answer(MALFORMED[name])])
    good = ScriptedEndpoint()
    await good.start()
    try:
        with capture_logs() as events:
            results = await send_report(
                b"{}", [Endpoint(bad.url()), Endpoint(good.url)], POLICY, 5.0, 2.0, {}
            )
    finally:
        bad.close()
        await good.stop()
    broken, fine = results
    assert fine.ok and fine.attempts == 1  # the other endpoint is untouched
    if broken.ok:
        assert name in LENIENT_IN_OLD_AIOHTTP, broken
        return
    assert broken.error == "malformed reply (ClientResponseError)", broken
    assert broken.attempts == 1  # permanent: the same peer would answer the same way
    [failed] = named(events, "report.failed")
    assert "garbage" not in repr(failed) and "aaaa" not in repr(failed)


async def test_daemon_survives_every_malformed_reply(
    demo_session: DemoCluster, temp_root: Path, state_dir: Path
) -> None:
    """The real daemon, one malformed endpoint and one good: every cycle completes in order."""
    cycles = len(MALFORMED) + 1
    bad = RawTcpServer([answer(data) for data in MALFORMED.values()])
    good = ScriptedEndpoint()
    await good.start()
    env = daemon_env(
        temp_root, state_dir, f"{bad.url()},{good.url}", RAY_USAGE_STATS_REPORT_INTERVAL_S="0.2"
    )
    try:
        with running_daemon(env) as daemon:
            await until(lambda: len(good.received) >= cycles, 30)
            await until(lambda: daemon.count('"report.') >= 2 * cycles, 10)
    finally:
        bad.close()
        await good.stop()
    seqs = [body["seq_number"] for body in good.bodies()]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs  # consecutive, none repeated
    assert daemon.count("cycle.crashed") == 0, daemon.lines
    lines = (state_dir / "history.jsonl").read_bytes().splitlines()
    records = [json.loads(line) for line in lines]
    to_bad = [r for r in records if r["endpoint"] == bad.url()]
    to_good = [r for r in records if r["endpoint"] == good.url]
    assert len(to_good) >= cycles and len(to_bad) >= cycles
    assert all(r["outcome"] == "sent" for r in to_good)
    failed = [r for r in to_bad if r["outcome"] == "failed"]
    assert len(failed) >= len(MALFORMED) - len(LENIENT_IN_OLD_AIOHTTP)
    assert {r["error"] for r in failed} == {"malformed reply (ClientResponseError)"}
    state = json.loads((state_dir / "state.json").read_bytes())
    counters = state["session"]["counters"]
    assert counters["seq_number"] >= seqs[-1] + 1  # the counters moved on every cycle
    assert counters["total_failed"] >= len(failed)
