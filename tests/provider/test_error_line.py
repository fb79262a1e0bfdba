"""A failing provider's own error line reaches the daemon's warning, bounded and sanitised."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.faults.helpers import named, responses_with, run_cycles
from tests.support.servers import ScriptedEndpoint
from usagestatsd.config.settings import Settings
from usagestatsd.demo import DemoCluster, make_session_dir
from usagestatsd.facts.fetch import ERROR_TEXT_MAX_CHARS, error_text
from usagestatsd.provider import SOCKET_NAME, ProviderServer, Usage, UsageUnavailable


def _jobs_as_dicts() -> Usage:
    raise UsageUnavailable(
        "GCS at 10.1.2.3:6379 is unreachable: AttributeError: 'dict' object has no "
        "attribute 'is_dead'\n"
    )


async def test_the_warning_carries_the_providers_error(
    make_settings: Callable[..., Settings], endpoint: ScriptedEndpoint, temp_root: Path
) -> None:
    """The real provider server answering 503: the warning says why, with no address."""
    session_dir = make_session_dir(temp_root)
    cluster = DemoCluster(session_dir, responses_with(drop=[SOCKET_NAME]))
    await cluster.start()
    settings = make_settings({"RAY_USAGE_STATS_REPORT_URL": endpoint.url})
    try:
        with ProviderServer(session_dir / "sockets" / SOCKET_NAME, _jobs_as_dicts):
            _, events = await run_cycles(settings)
    finally:
        await cluster.stop()
    problems = [p["problem"] for p in named(events, "cluster.source_failed")]
    assert problems == [
        "HTTP status 503: GCS at <address>:6379 is unreachable: AttributeError: "
        "'dict' object has no attribute 'is_dead'"
    ]


def test_error_text_is_one_bounded_printable_line() -> None:
    """Control characters, non-ASCII, IPv6 addresses and length are all tamed."""
    body = b'{"error": "bad\\u001b[31m \\u00e9 at [fe80::1%eth0]:6379\\n' + b"x" * 500 + b'"}'
    text = error_text(body)
    assert text is not None and len(text) == ERROR_TEXT_MAX_CHARS and text.endswith("...")
    assert text.startswith("bad [31m at [<address>]:6379 xxx")
    assert error_text(b"<html>503</html>") is None
    assert error_text(b'{"error": 3}') is None
    assert error_text(b'["error"]') is None
