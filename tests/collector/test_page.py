"""The fleet page as a person sees it: plain HTML, inline SVG, and in a real browser."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.collector.harness import (
    CollectorProcess,
    chromium,
    chromium_run,
    populate,
    running_collector,
)


@pytest.fixture(scope="module")
def fleet_collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorProcess]:
    """A collector over a stored fleet of 40 clusters across 14 days."""
    state = tmp_path_factory.mktemp("fleet") / "state"
    populate(state)
    with running_collector(state) as collector:
        yield collector


def _text(page: str) -> str:
    """What a reader sees: tags removed, entities decoded, whitespace collapsed."""
    page = re.sub(r"<style>.*?</style>", " ", page, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def test_page_without_a_browser(fleet_collector: CollectorProcess) -> None:
    """Every section is there, with no script and a policy that forbids any."""
    answer = fleet_collector.get("/")
    assert answer.status == 200
    assert "script-src" not in answer.headers["Content-Security-Policy"]
    assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
    page = answer.body.decode()
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org", "")
    text = _text(page)
    for needle in (
        "Clusters seen in the last 24 h",
        "Clusters seen in the last 7 days",
        "Clusters by Ray version",
        "Ray 2.60.0",
        "Libraries in use, as a share of clusters",
        "Cluster sizes",
        "Clouds and instance types",
        "m5.2xlarge",
        "Recently seen clusters",
    ):
        assert needle in text, needle
    assert page.count("<svg") == 8


@pytest.mark.browser
def test_page_in_chromium(fleet_collector: CollectorProcess, tmp_path: Path) -> None:
    """Headless chromium renders the page: the figures, chart labels and a real screenshot."""
    if chromium() is None:
        pytest.skip(
            "browser test skipped: chromium is not installed (make test-collector installs it)"
        )
    dom = chromium_run(fleet_collector.url, tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = _text(dom.stdout)
    fleet = fleet_collector.get("/api/fleet").json()
    seen = fleet["clusters"]
    assert f"Clusters seen in the last 24 h {seen['seen_24h']}" in text
    assert f"Clusters seen in the last 7 days {seen['seen_7d']}" in text
    for label in ("Ray 2.60.0", "Ray 2.47.1", "train", "serve", "aws", "gcp", "g5.12xlarge"):
        assert label in text, label
    top = fleet["libraries"][0]
    shown = f"{top['share']:.0%} ({top['clusters']})"
    # The bar's label, its hover title, and the figure printed beside it.
    assert f"{top['name']} {top['name']}: {shown} {shown}" in text
    shot = tmp_path / "page.png"
    result = chromium_run(
        fleet_collector.url, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1100,1400"
    )
    assert result.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000  # charts and text, not a blank page

    sid = fleet["recent_sessions"][0]["session_id"]
    session = chromium_run(f"{fleet_collector.url}sessions/{sid}", tmp_path / "p2", "--dump-dom")
    stored = fleet_collector.get(f"/api/sessions/{sid}").json()["reports"]
    session_text = html.unescape(session.stdout)
    assert f"Session {sid}" in _text(session.stdout)
    for report in stored:
        assert f'"seq_number": {report["seq_number"]}' in session_text
