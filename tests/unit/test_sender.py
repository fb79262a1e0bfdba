"""Sending to real endpoints on 127.0.0.1: what is retried, how long, what is logged."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from tests.support.servers import Reply, ScriptedEndpoint
from usagestatsd.config.settings import Endpoint, RetryPolicy
from usagestatsd.cycle.sender import USER_AGENT, parse_retry_after, send_report

POLICY = RetryPolicy(max_attempts=4, initial_delay_s=0.01, max_delay_s=0.05, budget_s=5)
BODY = b'{"schema_version": "0.1"}'


class RecordingSleep:
    """A sleep that records what it was asked to wait, and waits only a moment."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture
async def scripted(request: pytest.FixtureRequest) -> AsyncIterator[ScriptedEndpoint]:
    """An endpoint answering with the script given by the test's parametrisation."""
    server = ScriptedEndpoint(request.param)
    await server.start()
    yield server
    await server.stop()


async def send(
    server: ScriptedEndpoint, sleep: RecordingSleep | None = None, policy: RetryPolicy = POLICY
) -> tuple[bool, int | None, int]:
    """Send BODY once with retries; return (ok, status, attempts)."""
    [result] = await send_report(
        BODY,
        [Endpoint(server.url)],
        policy,
        policy.budget_s,
        2.0,
        {"seq": 0},
        sleep=sleep or RecordingSleep(),
    )
    return result.ok, result.status, result.attempts


@pytest.mark.parametrize("scripted", [[200]], indirect=True)
async def test_post_is_json_with_user_agent(scripted: ScriptedEndpoint) -> None:
    """One POST, the exact bytes, JSON content type, our User-Agent."""
    assert await send(scripted) == (True, 200, 1)
    _, body, headers = scripted.received[0]
    assert body == BODY
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == USER_AGENT


@pytest.mark.parametrize("scripted", [[500, 503, 200]], indirect=True)
async def test_5xx_then_success(scripted: ScriptedEndpoint) -> None:
    """5xx is retried with growing delays until it succeeds."""
    sleep = RecordingSleep()
    with capture_logs() as events:
        assert await send(scripted, sleep) == (True, 200, 3)
    assert len(sleep.delays) == 2
    retries = [e for e in events if e["event"] == "report.retry_scheduled"]
    assert [e["attempt"] for e in retries] == [1, 2]
    assert [e["event"] for e in events][-1] == "report.sent"


@pytest.mark.parametrize("scripted", [[Reply(429, {"Retry-After": "3"}), 200]], indirect=True)
async def test_429_retry_after_seconds(scripted: ScriptedEndpoint) -> None:
    """429 with Retry-After in seconds waits exactly that long."""
    sleep = RecordingSleep()
    assert await send(scripted, sleep) == (True, 200, 2)
    assert sleep.delays == [3.0]


async def test_429_retry_after_http_date() -> None:
    """429 with Retry-After as an HTTP date waits until that date."""
    when = email.utils.formatdate(time.time() + 4, usegmt=True)
    server = ScriptedEndpoint([Reply(429, {"Retry-After": when}), 200])
    await server.start()
    try:
        sleep = RecordingSleep()
        assert await send(server, sleep) == (True, 200, 2)
    finally:
        await server.stop()
    assert 2.5 <= sleep.delays[0] <= 4.0


@pytest.mark.parametrize("scripted", [[Reply(429, {"Retry-After": "9999"})]], indirect=True)
async def test_retry_after_beyond_budget_gives_up(scripted: ScriptedEndpoint) -> None:
    """A Retry-After longer than the retry budget ends the attempt instead of waiting."""
    sleep = RecordingSleep()
    assert await send(scripted, sleep) == (False, 429, 1)
    assert sleep.delays == []


@pytest.mark.parametrize(
    "scripted", [[400], [404], [Reply(301, {"Location": "http://x/"})]], indirect=True
)
async def test_4xx_and_redirects_are_not_retried(scripted: ScriptedEndpoint) -> None:
    """A 4xx other than 429, or a redirect, fails at once: one attempt."""
    ok, _status, attempts = await send(scripted)
    assert (ok, attempts) == (False, 1)
    assert len(scripted.received) == 1


@pytest.mark.parametrize("scripted", [[503]], indirect=True)
async def test_endpoint_failing_whole_cycle(scripted: ScriptedEndpoint) -> None:
    """An endpoint that keeps failing is tried max_attempts times, then counted failed."""
    with capture_logs() as events:
        assert await send(scripted) == (False, 503, 4)
    failed = [e for e in events if e["event"] == "report.failed"]
    assert len(failed) == 1 and failed[0]["attempts"] == 4


async def test_connection_refused_is_retried_then_fails() -> None:
    """Nobody listening: retried (it may come back), then one report.failed."""
    server = ScriptedEndpoint()
    await server.start()
    url = server.url
    await server.stop()
    [result] = await send_report(BODY, [Endpoint(url)], POLICY, 5, 1.0, {}, sleep=RecordingSleep())
    assert not result.ok and result.attempts == 4
    assert result.error is not None and "connection" in result.error


async def test_each_endpoint_has_its_own_outcome() -> None:
    """With two endpoints, one failing does not stop the other; both are reported."""
    good, bad = ScriptedEndpoint([200]), ScriptedEndpoint([400])
    await good.start()
    await bad.start()
    try:
        results = await send_report(
            BODY,
            [Endpoint(good.url), Endpoint(bad.url)],
            POLICY,
            5,
            1.0,
            {},
            sleep=RecordingSleep(),
        )
    finally:
        await good.stop()
        await bad.stop()
    assert [r.ok for r in results] == [True, False]
    assert good.received[0][1] == bad.received[0][1] == BODY


async def test_total_time_stays_within_budget() -> None:
    """Real sleeps: a failing endpoint is abandoned within the retry budget."""
    server = ScriptedEndpoint([500])
    await server.start()
    policy = RetryPolicy(max_attempts=20, initial_delay_s=0.1, max_delay_s=0.2, budget_s=0.6)
    try:
        started = time.monotonic()
        [result] = await send_report(BODY, [Endpoint(server.url)], policy, 0.6, 1.0, {})
        elapsed = time.monotonic() - started
    finally:
        await server.stop()
    assert not result.ok
    assert elapsed < 1.5  # the 0.6 s budget plus one request's time, not 20 attempts


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        ("0", 0.0),
        (" 7 ", 7.0),
        ("soon", None),
        ("", None),
        (None, None),
        ("-5", None),
        ("99999999999999", 86400.0),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    """Delta-seconds are taken (capped at a day); nonsense is ignored."""
    assert parse_retry_after(header, time.time()) == expected


def test_retry_after_date_in_past_is_zero() -> None:
    """An HTTP date in the past means retry now."""
    assert parse_retry_after("Mon, 01 Jan 2001 00:00:00 GMT", time.time()) == 0.0
