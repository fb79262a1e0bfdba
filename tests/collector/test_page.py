"""The fleet page as a person sees it: plain HTML, inline SVG, and in a real browser."""

from __future__ import annotations

import html
import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.collector.harness import (
    FLEET_TEAMS,
    LONG_LIBRARY,
    CollectorProcess,
    chromium,
    chromium_run,
    populate,
    running_collector,
    sample_report,
)
from usagestatsd.collector.page import fleet_html
from usagestatsd.collector.session_page import session_html
from usagestatsd.collector.store import StoredReport

GROUP_BY_TEAM = {"USAGESTATSD_COLLECTOR_GROUP_BY_TAG": "team"}
HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(2)>&amp;'


@pytest.fixture(scope="module")
def fleet_collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorProcess]:
    """A collector over a stored fleet of 40 clusters across 14 days, grouping by `team`."""
    state = tmp_path_factory.mktemp("fleet") / "state"
    populate(state)
    with running_collector(state, env=GROUP_BY_TEAM) as collector:
        yield collector


def _text(page: str) -> str:
    """What a reader sees: tags removed, entities decoded, whitespace collapsed."""
    page = re.sub(r"<style>.*?</style>", " ", page, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def _changes(page: str) -> str:
    """The page's text with each change read as `field: old → new`."""
    return _text(page).replace(" : ", ": ")


def _rows(page: str) -> dict[str, list[str]]:
    """The cells of each listed cluster's row after its link: Ray, cloud, nodes, CPUs, ..."""
    found = re.findall(r'<tr><td><a href="/sessions/([0-9a-f]+)"[^>]*>.*?</a></td>(.*?)</tr>', page)
    return {sid: [_text(c) for c in re.findall(r"<td>(.*?)</td>", rest)] for sid, rest in found}


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
        "Hardware in use, as a share of clusters",
        "Cluster sizes",
        "Clouds and instance types",
        "m5.2xlarge",
        "Recently seen clusters, by their team tag",
        "Without a team tag",
    ):
        assert needle in text, needle
    assert page.count("<svg") == 8
    assert 'href="/api/export.ndjson"' in page and 'href="/api/export.csv"' in page


def _section(page: str, heading: str) -> str:
    """The page from an <h2> heading to the next one."""
    start = page.index(f"<h2>{heading}")
    end = page.find("<h2>", start + 4)
    return page[start : end if end >= 0 else None]


def test_charts_under_their_headings(fleet_collector: CollectorProcess) -> None:
    """Each chart sits under the heading that names it."""
    page = fleet_collector.get("/").body.decode()
    charts = {
        "Libraries in use": ["Libraries"],
        "Hardware in use": ["Hardware"],
        "Cluster sizes": ["Nodes", "CPUs", "GPUs"],
        "Clouds and instance types": ["Clouds", "Instance types"],
    }
    for heading, titles in charts.items():
        section = _section(page, heading)
        assert re.findall(r"<svg[^>]*><title>([^<]*)</title>", section) == titles, heading


def test_full_library_names(fleet_collector: CollectorProcess) -> None:
    """A long name is wrapped onto lines that together are the whole name, never cut."""
    page = fleet_collector.get("/").body.decode()
    section = _section(page, "Libraries in use")
    labels = re.findall(r'<text [^>]*text-anchor="end">(.*?)</text>', section)
    names = ["".join(re.findall(r"<tspan[^>]*>([^<]*)</tspan>", label)) for label in labels]
    assert LONG_LIBRARY in names
    assert not any("…" in name for name in names)
    long_label = labels[names.index(LONG_LIBRARY)]
    assert long_label.count("<tspan") >= 2  # wrapped, not one line running off the chart


def test_groups_by_operator_tag(fleet_collector: CollectorProcess) -> None:
    """The clusters the page lists are grouped under their `team` tag's value."""
    fleet = fleet_collector.get("/api/fleet").json()
    assert fleet["group_by_tag"] == "team"
    recent = fleet["recent_sessions"]
    groups: dict[str | None, int] = {}
    for row in recent:
        groups[row["group"]] = groups.get(row["group"], 0) + 1
    assert set(groups) <= set(FLEET_TEAMS) and len(groups) == len(FLEET_TEAMS)
    text = _text(fleet_collector.get("/").body.decode())
    for team in FLEET_TEAMS:
        if team is None:
            assert f"Without a team tag ({groups[None]} cluster(s))" in text
        else:
            assert f"team = {team} ({groups[team]} cluster(s))" in text


def test_gpus_of_cpu_only_clusters(tmp_path: Path) -> None:
    """Ray leaves the GPU count out of a cluster without GPUs: that is 0 GPUs. Unknown is
    kept for a report with no resource totals at all."""
    with running_collector(tmp_path / "state") as collector:
        cpu_only = sample_report("a1" * 16, total_num_cpus=8, total_num_gpus=None)
        with_gpus = sample_report("a2" * 16, total_num_cpus=8, total_num_gpus=2)
        blind = sample_report("a3" * 16, total_num_cpus=None, total_num_gpus=None)
        for report in (cpu_only, with_gpus, blind):
            assert collector.post(report).status == 200
        fleet = collector.get("/api/fleet").json()
        gpus = {b["label"]: b["clusters"] for b in fleet["sizes"]["gpus"]}
        assert (gpus["0"], gpus["2-4"], gpus["unknown"]) == (1, 1, 1)
        shown = {r["session_id"]: r["gpus"] for r in fleet["recent_sessions"]}
        assert shown == {"a1" * 16: 0, "a2" * 16: 2, "a3" * 16: None}
        page = collector.get("/").body.decode()
        rows = _rows(page)
        assert rows["a1" * 16][3:5] == ["8", "0"]
        assert rows["a3" * 16][3:5] == ["–", "–"]
        assert "unknown means the report carried no resource totals at all" in _text(page)
        cpu_only_page = _text(collector.get(f"/sessions/{'a1' * 16}").body.decode())
        assert "total_num_gpus 0 (sent as null: no GPU among the resources)" in cpu_only_page
        blind_page = _text(collector.get(f"/sessions/{'a3' * 16}").body.decode())
        assert "total_num_gpus –" in blind_page


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

    assert LONG_LIBRARY in dom.stdout and "Hardware in use, as a share of clusters" in text
    for team in FLEET_TEAMS[:-1]:
        assert f"team = {team} (" in text, team
    assert "Without a team tag (" in text

    sid = next(r["session_id"] for r in fleet["recent_sessions"] if r["reports"] >= 2)
    session = chromium_run(f"{fleet_collector.url}sessions/{sid}", tmp_path / "p2", "--dump-dom")
    assert session.returncode == 0, session.stderr[-2000:]
    stored = fleet_collector.get(f"/api/sessions/{sid}").json()["reports"]
    rendered = _changes(session.stdout)
    assert f"Session {sid}" in rendered
    assert f"Newest report (seq {stored[0]['seq_number']})" in rendered
    old = stored[1]["report"]["extra_usage_tags"]["num_normal_tasks"]
    new = stored[0]["report"]["extra_usage_tags"]["num_normal_tasks"]
    assert f"extra_usage_tags.num_normal_tasks: {old} → {new}" in rendered
    assert f"{len(stored)} stored report(s)" in rendered


def test_session_page_is_a_table_of_changes(fleet_collector: CollectorProcess) -> None:
    """The newest report's fields in a table, each stored report a row saying what changed
    since the one before it (highlighted), and the bodies one link away."""
    fleet = fleet_collector.get("/api/fleet").json()
    sid = next(r["session_id"] for r in fleet["recent_sessions"] if r["reports"] >= 3)
    stored = fleet_collector.get(f"/api/sessions/{sid}").json()["reports"]
    page = fleet_collector.get(f"/sessions/{sid}").body.decode()
    assert f'href="/api/sessions/{sid}"' in page
    text = _text(page)
    newest = stored[0]["report"]
    assert f"Newest report (seq {newest['seq_number']})" in text
    assert f"ray_version {newest['ray_version']}" in text
    assert f"total_num_cpus {newest['total_num_cpus']}" in text
    # The task count is what changed from each report to the next; it is highlighted.
    assert re.search(r"<tr class=changed><th>extra_usage_tags\.num_normal_tasks</th>", page)
    for older, newer in zip(stored[1:], stored, strict=False):
        old = older["report"]["extra_usage_tags"]["num_normal_tasks"]
        new = newer["report"]["extra_usage_tags"]["num_normal_tasks"]
        assert f"extra_usage_tags.num_normal_tasks: {old} → {new}" in _changes(page)
    assert text.count("no change") == 0 and "oldest stored report" in text
    assert '"seq_number"' not in page  # a table, not the raw JSON


def test_hostile_values_are_escaped_pure() -> None:
    """Whatever a stored body or a tag value holds is text on the page, never markup."""
    body = sample_report(
        "ab" * 16,
        1,
        os=HOSTILE,
        library_usages=[HOSTILE],
        extra_usage_tags={HOSTILE: HOSTILE, "team": HOSTILE},
    )
    older = sample_report("ab" * 16, 0)
    reports = [
        StoredReport(1, 1_790_000_000_000, json.dumps(body)),
        StoredReport(0, 1_789_000_000_000, json.dumps(older)),
        StoredReport(2, 1_789_000_000_000, "{not json <script>"),
    ]
    page = session_html("ab" * 16, reports)
    row = {
        "session_id": "ab" * 16,
        "first_ms": 0,
        "last_ms": 0,
        "reports": 1,
        "ray_version": HOSTILE,
        "cloud_provider": HOSTILE,
        "nodes": 1,
        "cpus": 2,
        "gpus": 0,
        "group": HOSTILE,
    }
    fleet = fleet_collector_data(row)
    for rendered in (page, fleet_html(fleet)):
        assert "<script" not in rendered and "<img" not in rendered
        assert html.escape(HOSTILE) in rendered
    assert f"team = {HOSTILE} (1 cluster(s))" in _text(fleet_html(fleet))
    assert f"os: linux → {HOSTILE}" in _changes(page)


def fleet_collector_data(row: dict[str, object]) -> dict[str, object]:
    """Fleet data as `fleet()` returns it, with one listed cluster and hostile chart labels."""
    share = [{"name": HOSTILE, "clusters": 1, "share": 1.0}]
    size = [{"label": "1", "clusters": 1}]
    return {
        "generated_ms": 0,
        "clusters": {"stored": 1, "seen_24h": 1, "seen_7d": 1},
        "reports_stored": 1,
        "ray_versions_by_day": [{"day_ms": 0, "versions": {HOSTILE: 1}}],
        "libraries": share,
        "hardware": share,
        "sizes": {"nodes": size, "cpus": size, "gpus": size},
        "clouds": share,
        "instance_types": share,
        "group_by_tag": "team",
        "recent_sessions": [row],
    }


def test_hostile_stored_values_are_escaped(tmp_path: Path) -> None:
    """A stored body holding markup (a database written by anything) is escaped in the
    group names, the session table and its changes, served by a real collector."""
    state = tmp_path / "state"
    with running_collector(state, env=GROUP_BY_TEAM) as collector:
        for seq in (0, 1):
            assert collector.post(sample_report("ab" * 16, seq)).status == 200
    hostile = sample_report("ab" * 16, 1, os=HOSTILE, extra_usage_tags={"team": HOSTILE})
    with sqlite3.connect(state / "collector.sqlite3") as db:
        db.execute("UPDATE reports SET body = ? WHERE seq_number = 1", (json.dumps(hostile),))
    with running_collector(state, env=GROUP_BY_TEAM) as collector:
        fleet = collector.get("/").body.decode()
        session = collector.get(f"/sessions/{'ab' * 16}").body.decode()
    for page in (fleet, session):
        assert "<script" not in page and "<img" not in page
    assert f"team = {HOSTILE} (1 cluster(s))" in _text(fleet)
    assert f"os: linux → {HOSTILE}" in _changes(session)
    assert f"extra_usage_tags.team: – → {HOSTILE}" in _changes(session)
