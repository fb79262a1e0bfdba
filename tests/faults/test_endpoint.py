"""Endpoint faults: each ends the attempt cleanly with one event, and the next cycle recovers."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.faults.helpers import named
from tests.support.poll import until
from tests.support.processes import FREE_INTAKE, daemon_env, running_daemon
from tests.support.servers import (
    Endless,
    RawTcpServer,
    ScriptedEndpoint,
    reply,
    reset_mid_response,
    self_signed,
    server_tls,
    trickle,
)
from usagestatsd.config.settings import Endpoint, RetryPolicy
from usagestatsd.cycle.sender import send_report
from usagestatsd.demo import DemoCluster
from usagestatsd.store.state import EndpointResult

POLICY = RetryPolicy(max_attempts=3, initial_delay_s=0.01, max_delay_s=0.02, budget_s=5)
ONCE = RetryPolicy(max_attempts=1, initial_delay_s=0.01, max_delay_s=0.02, budget_s=5)
BODY = b'{"schema_version": "0.1"}'
# A generous promise, not a measurement: a trickled reply needs 64 s (its body) to 124 s (head
# and body) to arrive; not waiting for it means being done in well under half of that.
NOT_WAITED_FOR_S = 30.0


async def send(
    endpoint: Endpoint, policy: RetryPolicy = POLICY, timeout_s: float = 2.0
) -> tuple[EndpointResult, list[MutableMapping[str, Any]], float]:
    """One report to one endpoint with retries: the outcome, the events, the seconds taken."""
    started = time.monotonic()
    with capture_logs() as events:
        [result] = await send_report(BODY, [endpoint], policy, policy.budget_s, timeout_s, {})
    return result, events, time.monotonic() - started


def one_outcome(events: list[MutableMapping[str, Any]]) -> Mapping[str, Any]:
    """The single final event of a delivery (report.sent or report.failed)."""
    final = named(events, "report.sent") + named(events, "report.failed")
    assert len(final) == 1, events
    return final[0]


async def test_reset_mid_response_is_retried_and_recovers() -> None:
    """A connection reset half-way through the reply is retried; a later answer succeeds."""
    server = RawTcpServer([reset_mid_response] * 3 + [reply()])
    try:
        failed, events, _ = await send(Endpoint(server.url()))
        recovered, _, _ = await send(Endpoint(server.url()))
    finally:
        server.close()
    assert not failed.ok and failed.attempts == 3
    assert failed.error is not None and failed.error.startswith("connection broken")
    assert len(named(events, "report.retry_scheduled")) == 2
    assert one_outcome(events)["event"] == "report.failed"
    assert recovered.ok and recovered.attempts == 1


async def test_trickling_reply_times_out() -> None:
    """A reply whose head arrives at 1 byte/s is abandoned at the HTTP timeout."""
    server = RawTcpServer([trickle(head=True), reply()])
    try:
        failed, events, elapsed = await send(Endpoint(server.url()), ONCE, timeout_s=1.0)
        recovered, _, _ = await send(Endpoint(server.url()), ONCE, timeout_s=1.0)
    finally:
        server.close()
    assert not failed.ok and failed.error == "timed out"
    assert one_outcome(events)["reason"] == "timed out"
    assert elapsed < NOT_WAITED_FOR_S
    assert recovered.ok


@pytest.mark.parametrize(("status", "ok"), [("200 OK", True), ("503 Service Unavailable", False)])
async def test_trickling_body_is_not_waited_for(status: str, ok: bool) -> None:
    """Once the status is in, a body trickling at 1 byte/s is not waited for (it is unused)."""
    server = RawTcpServer([trickle(status)])
    try:
        result, events, elapsed = await send(Endpoint(server.url()), ONCE, timeout_s=5.0)
    finally:
        server.close()
    assert result.ok is ok and result.attempts == 1
    assert one_outcome(events)["event"] == ("report.sent" if ok else "report.failed")
    assert elapsed < NOT_WAITED_FOR_S


@pytest.mark.parametrize(("status", "ok"), [("200 OK", True), ("503 Service Unavailable", False)])
async def test_endless_body_is_not_read_past_the_cap(status: str, ok: bool) -> None:
    """An endless reply body is read only up to the cap; the connection is dropped at once."""
    endless = Endless(status)
    server = RawTcpServer([endless])
    try:
        result, events, _ = await send(Endpoint(server.url()), ONCE)
        await until(lambda: len(endless.sent) == server.connections, 10)
    finally:
        server.close()
    assert result.ok is ok and result.attempts == 1
    assert one_outcome(events)["event"] == ("report.sent" if ok else "report.failed")
    # What the peer could push before the reset (the evidence it was dropped at once, not
    # read on): the cap plus kernel socket buffers.
    assert max(endless.sent) < 32 << 20


async def test_unverified_certificate_fails_without_plain_http(tmp_path: Path) -> None:
    """A certificate that does not verify fails at once; nothing is ever sent in plain HTTP."""
    cert, key = self_signed(tmp_path)
    server = RawTcpServer([reply()], tls=server_tls(cert, key))
    try:
        untrusted, events, _ = await send(Endpoint(server.url("https")))
        trusted, _, _ = await send(Endpoint(server.url("https"), ca_bundle=cert))
    finally:
        server.close()
    assert not untrusted.ok and untrusted.attempts == 1
    assert untrusted.error == "TLS certificate did not verify"
    assert named(events, "report.retry_scheduled") == []
    assert trusted.ok  # the same server works once its certificate is trusted
    assert server.first_bytes == [b"\x16", b"\x16"]  # every connection opened with TLS


async def test_certificate_for_another_name_fails(tmp_path: Path) -> None:
    """A trusted certificate for 127.0.0.1 does not pass for the name localhost."""
    cert, key = self_signed(tmp_path)
    server = RawTcpServer([reply()], tls=server_tls(cert, key))
    try:
        result, _, _ = await send(
            Endpoint(f"https://localhost:{server.port}/", ca_bundle=cert), ONCE
        )
    finally:
        server.close()
    assert not result.ok and result.error is not None and "TLS" in result.error


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
async def test_redirect_is_a_permanent_failure(code: int) -> None:
    """A 3xx is not followed: one attempt, one report.failed, the target never hears of it."""
    target = ScriptedEndpoint()
    await target.start()
    server = RawTcpServer([reply(f"{code} Moved", b"", f"Location: {target.url}\r\n")])
    try:
        result, events, _ = await send(Endpoint(server.url()))
    finally:
        server.close()
        await target.stop()
    assert not result.ok and result.status == code and result.attempts == 1
    assert one_outcome(events)["reason"] == f"HTTP {code} redirect not followed"
    assert target.received == []


async def test_https_redirect_to_http_is_not_followed(tmp_path: Path) -> None:
    """An https endpoint redirecting to plain http: refused, and the http target gets nothing."""
    cert, key = self_signed(tmp_path)
    target = ScriptedEndpoint()
    await target.start()
    server = RawTcpServer(
        [reply("308 Permanent Redirect", b"", f"Location: {target.url}\r\n")],
        tls=server_tls(cert, key),
    )
    try:
        result, _, _ = await send(Endpoint(server.url("https"), ca_bundle=cert))
    finally:
        server.close()
        await target.stop()
    assert not result.ok and result.status == 308 and result.attempts == 1
    assert target.received == []


DNS_PROBE = """
import asyncio, json
from usagestatsd.cycle.sender import send_report
from usagestatsd.config.settings import Endpoint, RetryPolicy, load_settings
url = "https://nonexistent.invalid/"
settings = load_settings({"RAY_USAGE_STATS_REPORT_URL": url}, {}, None)
assert settings.endpoints[0].url == url
policy = RetryPolicy(max_attempts=2, initial_delay_s=0.01, max_delay_s=0.02, budget_s=5)
[r] = asyncio.run(send_report(b"{}", settings.endpoints, policy, 5, 2.0, {}))
print(json.dumps({"ok": r.ok, "error": r.error, "attempts": r.attempts}))
"""


def test_dns_failure_is_retried_then_fails(tmp_path: Path) -> None:
    """A name that does not resolve (RFC 6761 .invalid) is a retryable connection failure.

    Run in a fresh network namespace, so the resolver's query cannot leave the machine.
    """
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    probe = DNS_PROBE.replace("None)", f"__import__('pathlib').Path({str(empty)!r}))")
    done = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", probe], capture_output=True, text=True
    )
    if done.returncode != 0 and "unshare" in done.stderr:
        pytest.skip(f"cannot create a network namespace: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["ok"] is False and result["attempts"] == 2
    assert result["error"].startswith("connection failed")


@pytest.mark.slow
async def test_daemon_lives_through_every_endpoint_fault(
    demo_session: DemoCluster, temp_root: Path, state_dir: Path
) -> None:
    """One fault per cycle (reset, 5xx, 429, trickle, redirect, 4xx): each is one event; then ok."""
    faults = [
        reset_mid_response,
        reply("503 Service Unavailable"),
        reply("429 Too Many Requests", extra="Retry-After: 0\r\n"),
        trickle(head=True),
        reply("302 Found", b"", "Location: http://127.0.0.1:9/\r\n"),
        reply("400 Bad Request"),
    ]
    server = RawTcpServer([*faults, reply()])
    env = daemon_env(
        temp_root,
        state_dir,
        server.url(),
        RAY_USAGE_STATS_REPORT_INTERVAL_S="0.3",
        USAGESTATSD_RETRY_MAX_ATTEMPTS="1",
        USAGESTATSD_HTTP_TIMEOUT_S="1",
        USAGESTATSD_RAY_INTAKE=FREE_INTAKE,
    )
    try:
        with running_daemon(env) as daemon:
            await until(
                lambda: daemon.count("report.sent") >= 2 or daemon.count("report.failed") > 8, 30
            )
            assert daemon.proc.poll() is None
    finally:
        server.close()
    events = daemon.events()
    failed = named(events, "report.failed")
    reasons = [e["reason"] for e in failed]
    assert reasons == [
        reasons[0],
        "HTTP 503",
        "HTTP 429",
        "timed out",
        "HTTP 302 redirect not followed",
        "HTTP 400",
    ]
    assert reasons[0].startswith("connection broken")
    assert [e["seq"] for e in failed] == [0, 1, 2, 3, 4, 5]
    assert named(events, "report.sent")[0]["seq"] == 6
    assert named(events, "cycle.crashed") == []
    local = json.loads((demo_session.session_dir / "usage_stats.json").read_bytes())
    assert local["usage_stats"]["total_failed"] == 6


async def test_unicode_digit_retry_after_is_ignored() -> None:
    """A 429 whose Retry-After is a Unicode digit ('²') is retried normally, not a crash."""
    server = RawTcpServer([reply("429 Too Many Requests", extra="Retry-After: ²\r\n"), reply()])
    try:
        result, events, _ = await send(Endpoint(server.url()))
    finally:
        server.close()
    assert result.ok and result.attempts == 2
    assert named(events, "report.retry_scheduled")[0]["reason"] == "HTTP 429"
