"""The HTTP side: ingest, deletion, the page, JSON, metrics, health.

Nothing here reads the peer's address or any header other than Authorization,
Content-Length and Content-Type, and aiohttp's access log is off: the sender's address and
identifying headers are never stored or logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import time
from collections.abc import Sequence
from typing import Any

import structlog
from aiohttp import web

from usagestatsd.collector import page, session_page
from usagestatsd.collector.batches import BatchValidator
from usagestatsd.collector.export import export
from usagestatsd.collector.fleet import fleet
from usagestatsd.collector.metrics import Metrics
from usagestatsd.collector.settings import CollectorSettings
from usagestatsd.collector.store import AHEAD, CONFLICT, NEW, SEQ_WINDOW, SqlStore
from usagestatsd.collector.validate import Rejected
from usagestatsd.collector.workers import ValidatorPool
from usagestatsd.collector.writer import Writer
from usagestatsd.contract.fields import DELETION_PROTOCOL, SESSION_ID

MAX_DELETION_IDS = 1000
MAX_DELETION_BYTES = 256 << 10
RETRY_AFTER_S = 5
BODY_DEADLINE_S = 10.0  # from the end of the request head to the end of its body
_HTML_HEADERS = {
    # No script may run, nothing is fetched from elsewhere: the page is self-contained.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# Refused by the store (409, final for the sender): what the answer and the log say.
_REFUSED = {
    CONFLICT: "another report is stored under this session_id and seq_number",
    AHEAD: f"seq_number is more than {SEQ_WINDOW} ahead of the session's newest report",
}
_STORED = json.dumps({"stored": True, "duplicate": False})
_STORED_AGAIN = json.dumps({"stored": True, "duplicate": True})
log = structlog.get_logger()


def _authorised(request: web.Request, tokens: Sequence[str]) -> bool:
    """No tokens configured: open. Else `Bearer T`, or Basic auth whose password is T (so a
    sender that only knows URLs can use http://collector:T@host/)."""
    if not tokens:
        return True
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    offered = ""
    if scheme.lower() == "bearer":
        offered = value.strip()
    elif scheme.lower() == "basic":
        try:
            offered = base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            offered = ""
    # Compare against every token so the time taken says nothing about which one matched.
    matches = [hmac.compare_digest(offered.encode(), t.encode()) for t in tokens]
    return bool(offered) and any(matches)


def _unauthorised(metrics: Metrics, where: str) -> web.Response:
    metrics.rejected["unauthorized"] += 1
    log.warning(f"{where}.unauthorized", reason="missing or wrong bearer token")
    return web.json_response(
        {"error": "a valid bearer token is required"},
        status=401,
        headers={"WWW-Authenticate": 'Bearer realm="usagestatsd-collector"'},
    )


def _throttled(metrics: Metrics, reason: str) -> web.Response:
    metrics.throttled += 1
    return web.json_response(
        {"error": reason}, status=429, headers={"Retry-After": str(RETRY_AFTER_S)}
    )


def _deletion_ids(raw: bytes) -> list[str] | str:
    """The session ids of a deletion request, or what is wrong with it."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "body is not UTF-8 JSON"
    if not isinstance(body, dict) or body.get("protocol") != DELETION_PROTOCOL:
        return f"protocol must be {DELETION_PROTOCOL}"
    ids = body.get("session_ids")
    if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_DELETION_IDS:
        return f"session_ids must be a list of 1 to {MAX_DELETION_IDS} ids"
    if not all(isinstance(i, str) and SESSION_ID.fullmatch(i) for i in ids):
        return "session_ids holds a value that is not a session id"
    return sorted(set(ids))


class Collector:
    """The request handlers and what they share: settings, store, writer, counters."""

    def __init__(self, settings: CollectorSettings, store: SqlStore, writer: Writer) -> None:
        self.settings = settings
        self.store = store
        self.writer = writer
        self.metrics = Metrics()
        self.validators = ValidatorPool()
        self.batches = BatchValidator(self.validators, settings.max_report_bytes)

    async def ingest(self, request: web.Request) -> web.Response:
        """POST /: one schema-0.1 report."""
        if not _authorised(request, self.settings.ingest_tokens):
            return _unauthorised(self.metrics, "ingest")
        if not self.writer.admit(self.settings.max_pending):
            return _throttled(self.metrics, "busy; retry later")
        try:
            return await self._store_one(request)
        finally:
            self.writer.release()

    async def _store_one(self, request: web.Request) -> web.Response:
        settings, metrics = self.settings, self.metrics
        length = request.content_length
        if length is not None and length > settings.max_report_bytes:
            result: Any = Rejected(
                "too_large", f"body larger than {settings.max_report_bytes} bytes"
            )
        else:
            try:
                raw = await self._body(request)
            except TimeoutError:
                log.warning("ingest.rejected", reason="too_slow", detail="body not sent in time")
                return web.json_response({"error": "body not sent in time"}, status=408)
            # Off the event loop: the guard's cost grows with what a sender puts in the
            # strings, and every other connection is served meanwhile.
            result = await self.batches.check(raw)
        if isinstance(result, Rejected):
            metrics.rejected[result.reason] += 1
            log.warning("ingest.rejected", reason=result.reason, detail=result.detail)
            status = 413 if result.reason == "too_large" else 400
            return web.json_response({"error": result.detail}, status=status)
        if result.redactions:
            metrics.redacted_values += len(result.redactions)
            log.info(
                "ingest.redacted",
                session_id=result.session_id,
                fields=sorted({r.field for r in result.redactions}),
                reasons=sorted({r.reason for r in result.redactions}),
            )
        try:
            outcome = await self.writer.ingest(result)
        except Exception:
            return web.json_response(
                {"error": "storage unavailable; retry later"},
                status=503,
                headers={"Retry-After": str(RETRY_AFTER_S * 6)},
            )
        if outcome in _REFUSED:
            metrics.rejected[outcome] += 1
            log.warning(
                "ingest.rejected",
                reason=outcome,
                session_id=result.session_id,
                detail=_REFUSED[outcome],
            )
            return web.json_response({"error": _REFUSED[outcome]}, status=409)
        if outcome == NEW:
            metrics.ingested += 1
        else:
            metrics.duplicates += 1
        # The answer json_response would give, its text written once.
        text = _STORED if outcome == NEW else _STORED_AGAIN
        return web.Response(text=text, content_type="application/json")

    async def delete(self, request: web.Request) -> web.Response:
        """POST /delete: usagestatsd-deletion/1."""
        settings, metrics = self.settings, self.metrics
        if not settings.deletion_tokens:
            # Never the ingest tokens: every head holds those, and a deletion is final.
            log.warning("deletion.disabled", reason="no deletion_tokens are set")
            return web.json_response(
                {"error": "deletion is not enabled on this collector (no deletion token)"},
                status=403,
            )
        # Without the deletion token every request gets the same 401, whatever the ids:
        # whether a session is held (404 or 200) is told only to the token's holder.
        if not _authorised(request, settings.deletion_tokens):
            return _unauthorised(metrics, "deletion")
        try:
            ids = _deletion_ids(await self._body(request))
        except TimeoutError:
            ids = "body not sent in time"
        if isinstance(ids, str):
            log.warning("deletion.rejected", detail=ids)
            return web.json_response({"error": ids}, status=400)
        metrics.deletion_requests += 1
        try:
            known, removed = await self.writer.call(lambda s: s.delete_sessions(ids))
        except Exception:
            return _throttled(metrics, "storage unavailable; retry later")
        metrics.deleted_sessions += known
        metrics.deleted_reports += removed
        log.info("deletion.done", sessions=len(ids), sessions_found=known, reports_deleted=removed)
        if known == 0 and removed == 0:
            return web.json_response({"error": "no data held for these session ids"}, status=404)
        return web.json_response({"deleted_sessions": known, "deleted_reports": removed})

    async def _body(self, request: web.Request) -> bytes:
        """The request body (bounded by client_max_size), within BODY_DEADLINE_S."""
        if request.content.is_eof():
            return await request.read()  # all received already: nothing to wait for
        async with asyncio.timeout(BODY_DEADLINE_S):
            return await request.read()

    async def fleet_page(self, request: web.Request) -> web.Response:
        """GET /: the fleet page."""
        data = await asyncio.to_thread(self._fleet)
        return web.Response(
            text=page.fleet_html(data), content_type="text/html", headers=_HTML_HEADERS
        )

    async def fleet_json(self, request: web.Request) -> web.Response:
        """GET /api/fleet: the same aggregates as JSON."""
        data = await asyncio.to_thread(self._fleet)
        return web.json_response(data)

    def _fleet(self) -> dict[str, Any]:
        return fleet(self.store, int(time.time() * 1000), self.settings.group_by_tag)

    async def _session_reports(self, request: web.Request) -> tuple[str, list[Any]]:
        sid = request.match_info["session_id"]
        if not SESSION_ID.fullmatch(sid):
            raise web.HTTPNotFound(text="no such session")
        reports = await asyncio.to_thread(self.store.session_reports, sid)
        if not reports:
            raise web.HTTPNotFound(text="no reports stored for this session")
        return sid, reports

    async def session_page(self, request: web.Request) -> web.Response:
        """GET /sessions/<id>: the exact stored reports of one session."""
        sid, reports = await self._session_reports(request)
        return web.Response(
            text=session_page.session_html(sid, reports),
            content_type="text/html",
            headers=_HTML_HEADERS,
        )

    async def session_json(self, request: web.Request) -> web.Response:
        """GET /api/sessions/<id>: the stored bodies, exactly as kept."""
        sid, reports = await self._session_reports(request)
        body = ",".join(
            f'{{"seq_number": {r.seq_number}, "received_ms": {r.received_ms}, "report": {r.body}}}'
            for r in reports
        )
        return web.Response(
            text=f'{{"session_id": "{sid}", "reports": [{body}]}}', content_type="application/json"
        )

    async def export_ndjson(self, request: web.Request) -> web.StreamResponse:
        """GET /api/export.ndjson?from=&to=: the stored reports, one JSON object a line."""
        return await export(request, self.store, "ndjson")

    async def export_csv(self, request: web.Request) -> web.StreamResponse:
        """GET /api/export.csv?from=&to=: the stored reports as CSV."""
        return await export(request, self.store, "csv")

    async def metrics_text(self, request: web.Request) -> web.Response:
        """GET /metrics."""
        reports, sessions = await asyncio.to_thread(self.store.counts)
        text = self.metrics.render(reports, sessions, self.writer.pending)
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    async def healthz(self, request: web.Request) -> web.Response:
        """GET /healthz."""
        return web.Response(text="ok\n")

    def app(self) -> web.Application:
        """The aiohttp application with every route."""
        limit = max(self.settings.max_report_bytes, MAX_DELETION_BYTES) + 1
        app = web.Application(client_max_size=limit)
        app.router.add_post("/", self.ingest)
        app.router.add_post("/delete", self.delete)
        app.router.add_get("/", self.fleet_page)
        app.router.add_get("/api/fleet", self.fleet_json)
        app.router.add_get("/sessions/{session_id}", self.session_page)
        app.router.add_get("/api/sessions/{session_id}", self.session_json)
        app.router.add_get("/api/export.ndjson", self.export_ndjson)
        app.router.add_get("/api/export.csv", self.export_csv)
        app.router.add_get("/metrics", self.metrics_text)
        app.router.add_get("/healthz", self.healthz)
        return app
