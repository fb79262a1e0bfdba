"""`usagestatsd history` and `usagestatsd forget`: see every byte sent, and ask for deletion.

The deletion protocol (docs/deletion-protocol.md): POST to an endpoint's `deletion_url`
the JSON `{"protocol": "usagestatsd-deletion/1", "session_ids": [...]}`. A 2xx answer
confirms deletion; 404 says the endpoint holds nothing for those ids; anything else is
retried like a report. Only after every endpoint with a deletion URL confirmed (2xx) is
the local history of those sessions purged.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import aiohttp

from usagestatsd.config.settings import DEFAULT_ENDPOINT_URL, Endpoint, Settings, redact_url
from usagestatsd.contract.fields import DELETION_PROTOCOL
from usagestatsd.cycle.sender import deliver
from usagestatsd.store.history import Loaded, Record, history_of, summarise_sessions
from usagestatsd.store.published import (
    cannot_read,
    describe_source,
    read_published,
    service_state_dir,
)
from usagestatsd.store.state import EndpointResult

RAY_DELETION_ADDRESS = "usage_stats@ray.io"


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def show_history(
    settings: Settings, as_json: bool, last: int | None, session: str | None, raw: bool
) -> int:
    """Print the history (table, JSON lines, or the raw bytes of the selected bodies)."""
    loaded = _service_history(settings)
    if loaded is None:
        return 1
    records = [r for r in loaded.records if session is None or r.session_id == session]
    if last is not None:
        records = records[-last:] if last > 0 else []
    if loaded.skipped:
        print(f"usagestatsd: skipped {loaded.skipped} damaged history line(s)", file=sys.stderr)
    if raw:
        for record in records:
            if record.body is not None:
                sys.stdout.buffer.write(record.body.encode("ascii"))
        sys.stdout.flush()
        return 0
    for record in records:
        if as_json:
            print(json.dumps(record.__dict__))
        else:
            status = record.status if record.status is not None else "-"
            print(
                f"{_when(record.time_ms)}  {record.kind:<8} {record.outcome:<16} {status:<4} "
                f"{record.session_id}  {record.endpoint}  {record.error or ''}".rstrip()
            )
    if not records and not as_json:
        print("No reports in the history yet.")
    return 0


def _service_history(settings: Settings, command: str = "history") -> Loaded | None:
    """The service's history: its file when this user can read it, else the last records
    the service publishes for every user (said on stderr); None (said why) if neither."""
    published, published_problem = read_published(settings.runtime_dir)
    history = history_of(settings, service_state_dir(settings, published))
    blocked = cannot_read(history.path, command)
    if blocked is None:
        return history.load()
    if published is not None and published.state_dir == history.directory:
        print(
            f"usagestatsd: {blocked}; these are the last {len(published.history)} records, "
            f"{describe_source(published)}",
            file=sys.stderr,
        )
        return Loaded(published.history, 0)
    if published_problem:
        blocked += f" (and {published_problem})"
    print(f"usagestatsd: {blocked}", file=sys.stderr)
    return None


def deletion_request_text(sessions: Sequence[dict[str, Any]]) -> str:
    """The message a user sends under the policy to have Ray's copy deleted."""
    lines = [
        f"To: {RAY_DELETION_ADDRESS}",
        "Subject: Request to delete usage stats data",
        "",
        "Please delete the usage statistics collected under the following session ids,",
        "as the Ray usage stats policy promises.",
        "",
    ]
    for s in sessions:
        lines.append(
            f"  session_id {s['session_id']}  "
            f"(reported {_when(s['first_ms'])} to {_when(s['last_ms'])})"
        )
    return "\n".join(lines)


def list_sessions(settings: Settings) -> int:
    """`forget` without arguments: the sessions reported from here and how to delete them."""
    loaded = _service_history(settings, "forget")
    if loaded is None:
        return 1
    sessions = summarise_sessions(loaded.records)
    if not sessions:
        print("This head has no reported sessions in its history.")
        return 0
    print("Sessions reported from this head:")
    for s in sessions:
        print(
            f"  {s['session_id']}  first {_when(s['first_ms'])}  last {_when(s['last_ms'])}  "
            f"to {', '.join(s['endpoints'])}"
        )
    print()
    with_url = [e.display for e in settings.endpoints if e.deletion_url]
    if with_url:
        print("These endpoints take deletion requests directly: " + ", ".join(with_url))
        print("Run 'usagestatsd forget --session ID' or 'usagestatsd forget --all'.")
        print()
    if any(e.url == DEFAULT_ENDPOINT_URL and not e.deletion_url for e in settings.endpoints):
        print("For Ray's endpoint, send this e-mail:")
        print()
        print(deletion_request_text(sessions))
    return 0


def _tell_what_stays(settings: Settings, sessions: list[dict[str, Any]]) -> None:
    """Before anything is purged: the endpoints these sessions reached that take no deletion
    request (their copies stay), with the policy's e-mail where one of them is Ray's."""
    deletable = {e.display for e in settings.endpoints if e.deletion_url}
    stays = sorted({ep for s in sessions for ep in s["endpoints"] if ep not in deletable})
    if not stays:
        return
    print(
        "These sessions also went to endpoints that take no deletion request; "
        "their copies there are not deleted by this command: " + ", ".join(stays)
    )
    if redact_url(DEFAULT_ENDPOINT_URL) in stays:
        print("For Ray's endpoint, send this e-mail (the local history may be purged next):")
        print()
        print(deletion_request_text(sessions))
    print()


def _outcome(result: EndpointResult) -> str:
    if result.ok:
        return "deleted"
    return "unknown_session" if result.status == 404 else "deletion_failed"


async def _request(settings: Settings, ids: list[str]) -> list[EndpointResult]:
    body = json.dumps({"protocol": DELETION_PROTOCOL, "session_ids": ids}).encode()
    targets = [
        Endpoint(e.deletion_url, e.ca_bundle, e.proxy) for e in settings.endpoints if e.deletion_url
    ]
    timeout = aiohttp.ClientTimeout(total=settings.http_timeout_s)
    budget = settings.retry.budget_s
    async with aiohttp.ClientSession(timeout=timeout, trust_env=True) as http:
        return [
            await deliver(
                http,
                target,
                body,
                settings.retry,
                budget,
                {"sessions": len(ids)},
                events="deletion",
            )
            for target in targets
        ]


async def forget(settings: Settings, session: str | None, everything: bool) -> int:
    """Send deletion requests; purge local history only after every endpoint confirmed."""
    history = history_of(settings)
    known = [s["session_id"] for s in summarise_sessions(history.load().records)]
    ids = known if everything else [session] if session else []
    if not ids:
        print("usagestatsd: no session to forget", file=sys.stderr)
        return 1
    if not any(e.deletion_url for e in settings.endpoints):
        print("No endpoint in the settings has a deletion_url. To have Ray's copy deleted:\n")
        print(
            deletion_request_text(
                [s for s in summarise_sessions(history.load().records) if s["session_id"] in ids]
                or [{"session_id": i, "first_ms": 0, "last_ms": 0} for i in ids]
            )
        )
        return 1
    _tell_what_stays(
        settings, [s for s in summarise_sessions(history.load().records) if s["session_id"] in ids]
    )
    results = await _request(settings, ids)
    now_ms = int(time.time() * 1000)
    confirmed = all(r.ok for r in results)
    if confirmed:
        history.purge_sessions(ids, now_ms)
    history.append(
        [
            Record("deletion", now_ms, sid, r.endpoint, _outcome(r), r.status, r.error, None, None)
            for r in results
            for sid in ids
        ],
        now_ms,
    )
    for r in results:
        print(f"{r.endpoint}: {_outcome(r)}" + (f" ({r.error})" if r.error else ""))
    if confirmed:
        print(f"Deletion confirmed; the local history of {len(ids)} session(s) was purged.")
        return 0
    print("Deletion not confirmed by every endpoint; the local history is kept.")
    return 1
