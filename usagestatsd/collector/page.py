"""The fleet page: plain HTML, inline SVG, no JavaScript. Pure."""

from __future__ import annotations

import time
from collections.abc import Sequence
from html import escape
from typing import Any

from usagestatsd.collector.svg import bar_chart, line_chart

MAX_VERSIONS = 8
_STYLE = """
body { font-family: sans-serif; margin: 24px; color: #222; max-width: 1000px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; }
.cards { display: flex; gap: 16px; }
.card { border: 1px solid #ccc; border-radius: 6px; padding: 10px 16px; }
.card b { display: block; font-size: 26px; }
.grid { display: flex; flex-wrap: wrap; gap: 10px 30px; }
table { border-collapse: collapse; font-size: 13px; }
td, th { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; }
pre { background: #f6f6f6; padding: 8px; font-size: 12px;
      white-space: pre-wrap; overflow-wrap: anywhere; }
.muted { color: #666; font-size: 13px; }
.changed { background: #fff3bf; }
del { color: #a33; } ins { color: #161; text-decoration: none; font-weight: bold; }
td { overflow-wrap: anywhere; vertical-align: top; }
"""


def when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ms / 1000))


def document(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )


def _shares(title: str, rows: Sequence[dict[str, Any]]) -> str:
    items = [
        (str(r["name"]), float(r["share"]), f"{r['share']:.0%} ({r['clusters']})") for r in rows
    ]
    return f"<section><h3>{escape(title)}</h3>{bar_chart(title, items)}</section>"


def _sizes(title: str, rows: Sequence[dict[str, Any]]) -> str:
    items = [(str(r["label"]), float(r["clusters"]), str(r["clusters"])) for r in rows]
    return f"<section><h3>{escape(title)}</h3>{bar_chart(title, items, width=360)}</section>"


def _versions(days: Sequence[dict[str, Any]]) -> str:
    totals: dict[str, int] = {}
    for day in days:
        for version, count in day["versions"].items():
            totals[version] = totals.get(version, 0) + count
    ranked = sorted(totals, key=lambda v: (-totals[v], v))
    shown, rest = ranked[:MAX_VERSIONS], ranked[MAX_VERSIONS:]
    series = {v: [d["versions"].get(v, 0) for d in days] for v in shown}
    if rest:
        series["other"] = [sum(d["versions"].get(v, 0) for v in rest) for d in days]
    title = "Clusters by Ray version, per day (last 30 days, UTC)"
    return f"<h2>{escape(title)}</h2>" + line_chart(title, [d["day_ms"] for d in days], series)


def _sessions_table(rows: Sequence[dict[str, Any]]) -> str:
    """One table of clusters, newest first."""
    head = (
        "<tr><th>session</th><th>Ray</th><th>cloud</th><th>nodes</th><th>CPUs</th>"
        "<th>GPUs</th><th>reports</th><th>first seen</th><th>last seen</th></tr>"
    )
    lines = []
    for r in rows:
        sid = escape(r["session_id"])
        cells = [
            f'<a href="/sessions/{sid}" title="{sid}">{sid[:16]}…</a>',
            escape(str(r["ray_version"] or "unknown")),
            escape(str(r["cloud_provider"] or "unknown")),
            *(escape("–" if r[k] is None else str(r[k])) for k in ("nodes", "cpus", "gpus")),
            str(r["reports"]),
            when(r["first_ms"]),
            when(r["last_ms"]),
        ]
        lines.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    if not lines:
        return '<p class="muted">No reports yet.</p>'
    return f"<table>{head}{''.join(lines)}</table>"


def _recent(data: dict[str, Any]) -> str:
    """The recently seen clusters; grouped under each value of the operator's tag when the
    collector is told which tag names a cluster."""
    rows, key = data["recent_sessions"], data.get("group_by_tag")
    if not key or not rows:
        return "<h2>Recently seen clusters</h2>" + _sessions_table(rows)
    groups: dict[str | None, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    named = sorted((g for g in groups if g is not None), key=lambda g: (-len(groups[g]), g))
    parts = [
        f"<h2>Recently seen clusters, by their {escape(key)} tag</h2>",
        f'<p class="muted">Grouped by the value of the operator tag <code>{escape(key)}</code> '
        "in each cluster's newest report (setting <code>group_by_tag</code>).</p>",
    ]
    for value in named:
        members = groups[value]
        parts.append(
            f"<h3>{escape(key)} = {escape(value)} "
            f'<span class="muted">({len(members)} cluster(s))</span></h3>'
        )
        parts.append(_sessions_table(members))
    if None in groups:
        untagged = groups[None]
        parts.append(f"<h3>Without a {escape(key)} tag ({len(untagged)} cluster(s))</h3>")
        parts.append(_sessions_table(untagged))
    return "".join(parts)


def fleet_html(data: dict[str, Any]) -> str:
    """The whole fleet page from `fleet()`'s data."""
    clusters = data["clusters"]
    cards = "".join(
        f'<div class="card">{escape(label)}<b>{value}</b></div>'
        for label, value in (
            ("Clusters seen in the last 24 h", clusters["seen_24h"]),
            ("Clusters seen in the last 7 days", clusters["seen_7d"]),
            ("Clusters stored", clusters["stored"]),
            ("Reports stored", data["reports_stored"]),
        )
    )
    sizes = data["sizes"]
    body = (
        "<h1>Ray fleet usage</h1>"
        f'<p class="muted">Generated {when(data["generated_ms"])}. A cluster is one Ray '
        "session (a session_id). Shares are of all stored clusters.</p>"
        f'<div class="cards">{cards}</div>'
        + _versions(data["ray_versions_by_day"])
        + "<h2>Libraries in use, as a share of clusters</h2>"
        + f'<div class="grid">{_shares("Libraries", data["libraries"])}</div>'
        + "<h2>Hardware in use, as a share of clusters</h2>"
        + f'<div class="grid">{_shares("Hardware", data["hardware"])}</div>'
        + "<h2>Cluster sizes</h2>"
        + '<p class="muted">GPUs: a cluster whose report lists its CPUs but no GPU count has '
        "0 GPUs (Ray leaves the count out when the cluster has none); unknown means the "
        "report carried no resource totals at all.</p>"
        + f'<div class="grid">{_sizes("Nodes", sizes["nodes"])}'
        + f"{_sizes('CPUs', sizes['cpus'])}{_sizes('GPUs', sizes['gpus'])}</div>"
        + "<h2>Clouds and instance types</h2>"
        + f'<div class="grid">{_shares("Clouds", data["clouds"])}'
        + f"{_shares('Instance types', data['instance_types'])}</div>"
        + _recent(data)
        + '<p class="muted">The same figures as JSON: <a href="/api/fleet">/api/fleet</a>. '
        'Every stored report: <a href="/api/export.ndjson">NDJSON</a>, '
        '<a href="/api/export.csv">CSV</a>. Metrics: <a href="/metrics">/metrics</a>.</p>'
    )
    return document("Ray fleet usage", body)
