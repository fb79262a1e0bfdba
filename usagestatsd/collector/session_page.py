"""The session page: one session's stored reports as tables, with what changed. Pure.

The newest report's fields are one table; every stored report is a row of a second table
saying what changed since the report before it. The bodies exactly as kept are one link
away (`/api/sessions/<id>`). Every value is escaped: a report's strings are the sender's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape
from typing import Any

from usagestatsd.collector.fleet import gpus_shown
from usagestatsd.collector.page import document, when
from usagestatsd.collector.store import StoredReport
from usagestatsd.contract.fields import REPORT_FIELDS

# Different in every report by design: shown as columns, not listed as changes.
_PER_REPORT = ("seq_number", "collect_timestamp_ms", "total_success", "total_failed")
_TAGS = "extra_usage_tags"


def _fields(report: StoredReport) -> dict[str, Any]:
    """The report's fields, the tags spread as `extra_usage_tags.KEY`; {} if unreadable."""
    try:
        body = json.loads(report.body)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(body, dict):
        return {}
    flat = {k: v for k, v in body.items() if k != _TAGS}
    tags = body.get(_TAGS)
    if isinstance(tags, dict):
        flat.update({f"{_TAGS}.{k}": v for k, v in sorted(tags.items())})
    return flat


def _shown(value: Any) -> str:
    """A value as text for a reader (escaped later)."""
    if value is None:
        return "–"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) if value else "(none)"
    return str(value)


def _order(names: set[str]) -> list[str]:
    """Schema order first, the tags after, each alphabetically."""
    rank = {name: n for n, name in enumerate(REPORT_FIELDS)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def changes(older: dict[str, Any], newer: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, old value, new value) for each field that differs, in display order."""
    names = (set(older) | set(newer)) - set(_PER_REPORT)
    return [
        (name, older.get(name), newer.get(name))
        for name in _order(names)
        if older.get(name) != newer.get(name)
    ]


def _change_cell(diff: Sequence[tuple[str, Any, Any]]) -> str:
    if not diff:
        return '<span class="muted">no change</span>'
    return "".join(
        f"<div><b>{escape(name)}</b>: <del>{escape(_shown(old))}</del> → "
        f"<ins>{escape(_shown(new))}</ins></div>"
        for name, old, new in diff
    )


def _value_cell(name: str, fields: dict[str, Any]) -> str:
    value = fields[name]
    if (
        name == "total_num_gpus"
        and value is None
        and gpus_shown(fields.get("total_num_cpus"), None) == 0
    ):
        # Counted as 0 on the fleet page; what was stored is named too.
        return '0 <span class="muted">(sent as null: no GPU among the resources)</span>'
    return escape(_shown(value))


def _newest_table(newest: dict[str, Any], changed: set[str]) -> str:
    rows = "".join(
        f"<tr{' class=changed' if name in changed else ''}><th>{escape(name)}</th>"
        f"<td>{_value_cell(name, newest)}</td></tr>"
        for name in _order(set(newest))
    )
    return f"<table>{rows}</table>"


def _reports_table(reports: Sequence[StoredReport], fields: Sequence[dict[str, Any]]) -> str:
    head = (
        "<tr><th>seq</th><th>received</th><th>collected</th>"
        "<th>changed since the report before it</th></tr>"
    )
    lines = []
    for index, report in enumerate(reports):
        mine = fields[index]
        if index + 1 < len(reports):
            cell = _change_cell(changes(fields[index + 1], mine))
        else:
            cell = '<span class="muted">oldest stored report</span>'
        collected = mine.get("collect_timestamp_ms")
        lines.append(
            f"<tr><td>{report.seq_number}</td><td>{when(report.received_ms)}</td>"
            f"<td>{when(collected) if isinstance(collected, int) else '–'}</td>"
            f"<td>{cell}</td></tr>"
        )
    return f"<table>{head}{''.join(lines)}</table>"


def session_html(session_id: str, reports: Sequence[StoredReport]) -> str:
    """One session's stored reports (newest first) as tables, changes highlighted."""
    sid = escape(session_id)
    fields = [_fields(r) for r in reports]
    newest = fields[0] if fields else {}
    changed = {name for name, _, _ in changes(fields[1], newest)} if len(fields) > 1 else set()
    body = (
        f"<h1>Session {sid}</h1>"
        f'<p><a href="/">Back to the fleet</a> · {len(reports)} stored report(s). '
        f'The bodies exactly as kept: <a href="/api/sessions/{sid}">/api/sessions/{sid}</a> '
        "(JSON).</p>"
        f"<h2>Newest report (seq {reports[0].seq_number if reports else '–'})</h2>"
        '<p class="muted">Highlighted: changed since the report before it.</p>'
        + _newest_table(newest, changed)
        + "<h2>Every stored report, newest first</h2>"
        + _reports_table(reports, fields)
    )
    return document(f"Session {session_id}", body)
