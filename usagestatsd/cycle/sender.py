"""POST one report body to each endpoint, retrying only what is worth retrying.

Retryable: connection errors, timeouts, 429 and 5xx (honouring Retry-After). Never a
redirect or another 4xx, never a TLS verification failure, never a malformed reply. Every
error the HTTP client or its parser raises is one failed attempt of that endpoint alone:
nothing escapes `deliver`, so one endpoint's failure never touches another's. Attempts and
total time are capped well below the report interval. Each scheduled retry is one
`report.retry_scheduled` event; each endpoint's final outcome is one `report.sent` or
`report.failed` event.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from aiohttp.http_exceptions import HttpProcessingError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from usagestatsd import __version__
from usagestatsd.config.settings import Endpoint, RetryPolicy
from usagestatsd.store.state import EndpointResult

USER_AGENT = f"usagestatsd/{__version__}"
MAX_RETRY_AFTER_S = 24 * 3600.0

log = structlog.get_logger()
Sleep = Callable[[float], Awaitable[None]]


class RetryableError(Exception):
    """A failure worth another attempt; `retry_after` is the server's wish, if it said one."""

    def __init__(self, reason: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


class PermanentError(Exception):
    """A failure another attempt would not fix (4xx, redirect, TLS verification)."""

    def __init__(self, reason: str, status: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.status = status


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date); None if unusable."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():  # not '²' or other Unicode digits int() refuses
        seconds = float(int(text[:10]))
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when is None or when.tzinfo is None:
            return None
        seconds = when.timestamp() - now
    return max(0.0, min(seconds, MAX_RETRY_AFTER_S))


@dataclass
class _Pacing:
    """Computes each wait once, so tenacity's stop and wait agree whatever order they run."""

    policy: RetryPolicy
    budget_s: float
    rng: random.Random
    waits: dict[int, float]

    def wait_for(self, state: RetryCallState) -> float:
        if state.attempt_number not in self.waits:
            exc = state.outcome.exception() if state.outcome else None
            hinted = exc.retry_after if isinstance(exc, RetryableError) else None
            if hinted is not None:
                delay = hinted
            else:
                base = self.policy.initial_delay_s * 2 ** (state.attempt_number - 1)
                delay = min(self.policy.max_delay_s, base) * self.rng.uniform(0.5, 1.0)
            self.waits[state.attempt_number] = delay
        return self.waits[state.attempt_number]

    def should_stop(self, state: RetryCallState) -> bool:
        if state.attempt_number >= self.policy.max_attempts:
            return True
        elapsed = state.seconds_since_start or 0.0
        return elapsed + self.wait_for(state) > self.budget_s


@functools.lru_cache(maxsize=16)
def ssl_context_for(endpoint: Endpoint) -> ssl.SSLContext:
    """Verified TLS always; the endpoint's CA bundle replaces the system store when given."""
    context = ssl.create_default_context(
        cafile=str(endpoint.ca_bundle) if endpoint.ca_bundle else None
    )
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


async def _post_once(
    http: aiohttp.ClientSession, endpoint: Endpoint, body: bytes, max_response: int
) -> int:
    try:
        async with http.post(
            endpoint.url,
            data=body,
            headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
            # Only https needs a context; loading the CA store costs ~20 ms and 0.7 MiB.
            ssl=ssl_context_for(endpoint) if endpoint.url.startswith("https:") else True,
            proxy=endpoint.proxy,
            allow_redirects=False,
        ) as response:
            # Read a bounded amount so the connection ends cleanly; the content is not used.
            await response.content.read(max_response)
            status = response.status
            if 200 <= status < 300:
                return status
            if status == 429 or status >= 500:
                hint = parse_retry_after(response.headers.get("Retry-After"), time.time())
                raise RetryableError(f"HTTP {status}", status, hint)
            if 300 <= status < 400:
                raise PermanentError(f"HTTP {status} redirect not followed", status)
            raise PermanentError(f"HTTP {status}", status)
    except aiohttp.ClientConnectorCertificateError:
        raise PermanentError("TLS certificate did not verify") from None
    except aiohttp.ClientSSLError as exc:
        raise PermanentError(f"TLS failed ({type(exc).__name__})") from None
    except aiohttp.ClientConnectorError as exc:
        reason = exc.os_error.strerror if exc.os_error and exc.os_error.strerror else "failed"
        raise RetryableError(f"connection failed ({reason})") from None
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        raise RetryableError(f"connection broken ({type(exc).__name__})") from None
    except TimeoutError:
        raise RetryableError("timed out") from None
    except aiohttp.ClientHttpProxyError as exc:
        # The proxy refused the tunnel: its status decides, as an endpoint's would.
        if exc.status == 429 or exc.status >= 500:
            raise RetryableError(f"proxy answered HTTP {exc.status}", exc.status) from None
        raise PermanentError(f"proxy answered HTTP {exc.status}", exc.status) from None
    except aiohttp.ClientResponseError as exc:
        # aiohttp's HTTP parser (3.8.4 to 3.14) raises this for a reply that is not HTTP:
        # a bad status line or header, a header over 8 KiB, too many headers, a bad chunk
        # size, a duplicate Content-Length, other bytes. The same peer would answer the same
        # way: permanent for this cycle. Its message quotes the peer's bytes: never logged.
        raise PermanentError(f"malformed reply ({type(exc).__name__})") from None
    except (aiohttp.ClientError, HttpProcessingError, ValueError) as exc:
        # Anything else the client or its parser raises is one failed attempt, never a crash.
        raise PermanentError(f"request failed ({type(exc).__name__})") from None


async def deliver(
    http: aiohttp.ClientSession,
    endpoint: Endpoint,
    body: bytes,
    policy: RetryPolicy,
    budget_s: float,
    context: dict[str, Any],
    sleep: Sleep = asyncio.sleep,
    rng: random.Random | None = None,
    max_response: int = 64 << 10,
    events: str = "report",
) -> EndpointResult:
    """Deliver `body` to one endpoint with retries; always returns the outcome, never raises.

    `events` names the log events (`report.sent`, `deletion.sent`, ...).
    """
    pacing = _Pacing(policy, budget_s, rng or random.Random(), {})
    attempts = 0

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            f"{events}.retry_scheduled",
            endpoint=endpoint.display,
            attempt=state.attempt_number,
            delay_s=round(pacing.wait_for(state), 3),
            reason=getattr(exc, "reason", str(exc)),
            **context,
        )

    try:
        async for attempt in AsyncRetrying(
            stop=pacing.should_stop,
            wait=pacing.wait_for,
            retry=retry_if_exception_type(RetryableError),
            before_sleep=before_sleep,
            sleep=sleep,
            reraise=True,
        ):
            with attempt:
                attempts += 1
                status = await _post_once(http, endpoint, body, max_response)
    except (RetryableError, PermanentError) as exc:
        log.warning(
            f"{events}.failed",
            endpoint=endpoint.display,
            attempts=attempts,
            status=exc.status,
            reason=exc.reason,
            **context,
        )
        return EndpointResult(endpoint.display, False, exc.status, exc.reason, attempts)
    log.info(
        f"{events}.sent", endpoint=endpoint.display, status=status, attempts=attempts, **context
    )
    return EndpointResult(endpoint.display, True, status, None, attempts)


async def send_report(
    body: bytes,
    endpoints: Sequence[Endpoint],
    policy: RetryPolicy,
    budget_s: float,
    timeout_s: float,
    context: dict[str, Any],
    sleep: Sleep = asyncio.sleep,
    max_response: int = 64 << 10,
) -> list[EndpointResult]:
    """Send the same bytes to every endpoint concurrently; one result per endpoint."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    # A fresh session per cycle: no idle keep-alive connections between hourly reports.
    async with aiohttp.ClientSession(timeout=timeout, trust_env=True) as http:
        return list(
            await asyncio.gather(
                *(
                    deliver(http, ep, body, policy, budget_s, context, sleep, None, max_response)
                    for ep in endpoints
                )
            )
        )
