"""The fleet page and the session page: plain HTML, inline SVG, no JavaScript. Pure."""

from __future__ import annotations

import time
from collections.abc import Sequence
from html import escape
from typing import Any

from usagestatsd.collector.store import StoredReport
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
"""


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ms / 1000))


def _doc(title: str, body: str) -> str:
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
    head = (
        "<tr><th>session</th><th>Ray</th><th>cloud</th><th>nodes</th><th>CPUs</th>"
        "<th>GPUs</th><th>reports</th><th>first seen</th><th>last seen</th></tr>"
    )
    lines = []
    for r in rows:
        sid = escape(r["session_id"])
        cells = [
            f'<a href="/sessions/{sid}">{sid[:16]}…</a>',
            escape(str(r["ray_version"] or "unknown")),
            escape(str(r["cloud_provider"] or "unknown")),
            *(escape("–" if r[k] is None else str(r[k])) for k in ("nodes", "cpus", "gpus")),
            str(r["reports"]),
            _when(r["first_ms"]),
            _when(r["last_ms"]),
        ]
        lines.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    if not lines:
        return '<p class="muted">No reports yet.</p>'
    return f"<table>{head}{''.join(lines)}</table>"


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
        f'<p class="muted">Generated {_when(data["generated_ms"])}. A cluster is one Ray '
        "session (a session_id). Shares are of all stored clusters.</p>"
        f'<div class="cards">{cards}</div>'
        + _versions(data["ray_versions_by_day"])
        + "<h2>Libraries in use, as a share of clusters</h2>"
        + f'<div class="grid">{_shares("Libraries", data["libraries"])}'
        + f"{_shares('Hardware', data['hardware'])}</div>"
        + "<h2>Cluster sizes</h2>"
        + f'<div class="grid">{_sizes("Nodes", sizes["nodes"])}'
        + f"{_sizes('CPUs', sizes['cpus'])}{_sizes('GPUs', sizes['gpus'])}</div>"
        + "<h2>Clouds and instance types</h2>"
        + f'<div class="grid">{_shares("Clouds", data["clouds"])}'
        + f"{_shares('Instance types', data['instance_types'])}</div>"
        + "<h2>Recently seen clusters</h2>"
        + _sessions_table(data["recent_sessions"])
        + '<p class="muted">The same figures as JSON: <a href="/api/fleet">/api/fleet</a>. '
        'Metrics: <a href="/metrics">/metrics</a>.</p>'
    )
    return _doc("Ray fleet usage", body)


def session_html(session_id: str, reports: Sequence[StoredReport]) -> str:
    """Every stored report of one session, exactly as kept, newest first."""
    sid = escape(session_id)
    items = "".join(
        f"<h3>Report {r.seq_number}</h3>"
        f'<p class="muted">received {_when(r.received_ms)}</p><pre>{escape(r.body)}</pre>'
        for r in reports
    )
    body = (
        f"<h1>Session {sid}</h1>"
        f'<p><a href="/">Back to the fleet</a> · {len(reports)} stored report(s), exactly as '
        f'kept (also as JSON: <a href="/api/sessions/{sid}">/api/sessions/{sid}</a>).</p>' + items
    )
    return _doc(f"Session {session_id}", body)
