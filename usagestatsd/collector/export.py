"""Every stored report for a data team: NDJSON or CSV, streamed, over a date range.

The answer is written page by page (a few hundred reports read, written, then the next
page): however many reports are stored, the collector holds one page of them, and the
read connection is taken for one page at a time, so the fleet page is served meanwhile.
Pages follow the order (received_ms, session_id, seq_number) from the last row written,
never an OFFSET, so a page costs the same at the end of the table as at its start.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web
from multidict import MultiMapping

from usagestatsd.collector.store import Cursor, SqlStore
from usagestatsd.contract.fields import REPORT_FIELDS

PAGE_ROWS = 500
FORMATS = {
    "ndjson": ("application/x-ndjson", "usagestatsd-reports.ndjson"),
    "csv": ("text/csv", "usagestatsd-reports.csv"),
}
PARAMETERS = ("from", "to")
_ACCEPTED = "a date (YYYY-MM-DD, midnight UTC) or a time with its offset (2026-12-01T08:00Z)"
_EDGE = 1 << 62  # an open end of the range
# The CSV columns: where and when the collector got the report, then the report's fields.
_KEY = ("received_ms", "session_id", "seq_number")
CSV_HEADER = (*_KEY, *(name for name in REPORT_FIELDS if name not in _KEY))
# A spreadsheet takes a cell starting with one of these for a formula; such a text cell is
# written with a leading apostrophe (the usual defence), so it opens as text.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
log = structlog.get_logger()


class BadParameter(ValueError):
    """A query parameter that cannot be used: its name and what is accepted."""

    def __init__(self, name: str, accepted: str) -> None:
        super().__init__(f"{name}: {accepted}")
        self.name = name


def _instant_ms(name: str, text: str) -> int:
    try:
        if len(text) == 10:
            moment = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
        else:
            moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadParameter(name, _ACCEPTED) from None
    if moment.tzinfo is None:
        raise BadParameter(name, _ACCEPTED + "; a time needs its offset, e.g. Z")
    return int(moment.timestamp() * 1000)


def parse_range(query: MultiMapping[str]) -> tuple[int, int]:
    """[from, to) in ms since the epoch, on the collector's receiving clock; an end left
    out is open. Raises BadParameter naming the parameter."""
    for name in query:
        if name not in PARAMETERS:
            raise BadParameter(name, "no such parameter (from and to are)")
    bounds = {"from": -_EDGE, "to": _EDGE}
    for name in PARAMETERS:
        if name not in query:
            continue
        values = query.getall(name)
        if len(values) != 1 or not 1 <= len(values[0]) <= 40:
            raise BadParameter(name, "given once, " + _ACCEPTED)
        bounds[name] = _instant_ms(name, values[0].strip())
    if bounds["from"] >= bounds["to"]:
        raise BadParameter("to", "a moment after from")
    return bounds["from"], bounds["to"]


def read_page(
    store: SqlStore, low: int, high: int, after: tuple[int, str, int] | None
) -> list[tuple[int, str, int, str]]:
    """The next PAGE_ROWS reports received in [low, high) after the `after` key."""
    start = after or (low - 1, "", 0)

    def query(q: Callable[..., Cursor]) -> list[tuple[int, str, int, str]]:
        rows = q(
            "SELECT received_ms, session_id, seq_number, body FROM reports "
            "WHERE received_ms >= ? AND received_ms < ? "
            "AND (received_ms > ? OR (received_ms = ? AND (session_id > ? "
            "OR (session_id = ? AND seq_number > ?)))) "
            "ORDER BY received_ms, session_id, seq_number LIMIT ?",
            (low, high, start[0], start[0], start[1], start[1], start[2], PAGE_ROWS),
        ).fetchall()
        return [(int(r), str(s), int(n), str(b)) for r, s, n, b in rows]

    result: list[tuple[int, str, int, str]] = store.read(query)
    return result


def ndjson_lines(rows: Sequence[tuple[int, str, int, str]]) -> str:
    """One JSON object a line; the report embedded exactly as kept (a stored body is one
    line of JSON already: raw line breaks cannot occur inside its strings)."""
    return "".join(
        f'{{"received_ms": {received}, "session_id": {json.dumps(sid)}, '
        f'"seq_number": {seq}, "report": {body.replace(chr(10), "").replace(chr(13), "")}}}\n'
        for received, sid, seq, body in rows
    )


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def csv_lines(rows: Sequence[tuple[int, str, int, str]], header: bool) -> str:
    """RFC 4180 CSV (quoted where a value needs it, CRLF line ends); lists and the tags as
    JSON text in one cell; a text cell a spreadsheet would run as a formula starts with '."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    if header:
        writer.writerow(CSV_HEADER)
    for received, sid, seq, body in rows:
        try:
            report = json.loads(body)
        except (ValueError, RecursionError):
            report = {}
        fields = [report.get(name) if isinstance(report, dict) else None for name in CSV_HEADER]
        writer.writerow([str(received), _cell(sid), str(seq), *map(_cell, fields[3:])])
    return out.getvalue()


def _next_page(
    store: SqlStore, kind: str, low: int, high: int, after: tuple[int, str, int] | None
) -> tuple[bytes, list[tuple[int, str, int, str]]]:
    """The next page's rows, and the bytes that write them in `kind`."""
    rows = read_page(store, low, high, after)
    text = csv_lines(rows, after is None) if kind == "csv" else ndjson_lines(rows)
    return text.encode("utf-8"), rows


async def export(request: web.Request, store: SqlStore, kind: str) -> web.StreamResponse:
    """GET /api/export.{ndjson,csv}?from=&to=: stream the stored reports."""
    try:
        low, high = parse_range(request.query)
    except BadParameter as exc:
        log.warning("export.rejected", parameter=exc.name, detail=str(exc))
        return web.json_response({"error": str(exc), "parameter": exc.name}, status=400)
    content_type, filename = FORMATS[kind]
    response = web.StreamResponse(
        headers={
            "Content-Type": f"{content_type}; charset=utf-8",
            "Content-Disposition": f'attachment; filename="{filename}"',
            "X-Content-Type-Options": "nosniff",
        }
    )
    response.enable_chunked_encoding()
    await response.prepare(request)
    after: tuple[int, str, int] | None = None
    written = 0
    while True:
        try:
            # Read and formatted off the event loop: a CSV page parses 500 bodies.
            chunk, rows = await asyncio.to_thread(_next_page, store, kind, low, high, after)
        except Exception as exc:
            # The status is sent: cutting the stream is how the reader learns of it.
            log.error("export.failed", error=type(exc).__name__, reports_written=written)
            raise
        if chunk:
            await response.write(chunk)
        written += len(rows)
        if len(rows) < PAGE_ROWS:
            break
        after = rows[-1][:3]
    await response.write_eof()
    log.info("export.done", format=kind, reports=written)
    return response
