"""One report cycle, driven through its public unit: what it did, as a typed outcome.

Each test runs `ReportCycle.run` (the daemon's own code, in this process) against a real
cluster of sockets and a real endpoint, and checks what a user would see: what the
endpoint received, the files on disk, the log events, and the outcome the daemon acts on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from structlog.testing import capture_logs

from tests.faults.helpers import named, report_cycle, the_session
from tests.support.processes import NO_DASHBOARD
from tests.support.servers import ScriptedEndpoint
from usagestatsd.config.settings import Settings
from usagestatsd.cycle.refusal import NOT_RUNNING, RefusalKind
from usagestatsd.cycle.run import STANDING_DOWN, Result
from usagestatsd.demo import DemoCluster, make_session_dir
from usagestatsd.store.state import StateStore


async def test_a_report_sent_is_counted_and_kept(
    make_settings: Callable[..., Settings],
    endpoint: ScriptedEndpoint,
    demo_session: DemoCluster,
    temp_root: Path,
    state_dir: Path,
) -> None:
    """Sent: the endpoint has it, the counters are saved, usage_stats.json is our copy."""
    cycle = report_cycle(make_settings({"RAY_USAGE_STATS_REPORT_URL": endpoint.url}))
    session = the_session(temp_root)
    first = await cycle.run(session)
    assert (first.result, first.success, first.state_changed) == (Result.SENT, True, True)
    assert first.refusal is None and first.hold is None
    assert first.beside is not None and first.beside.arrangement == "unknown"
    assert cycle.save()
    saved = StateStore(state_dir).load()
    assert saved.session is not None and saved.session.counters.seq_number == 1
    local = (session.usage_stats_path).read_bytes()
    assert json.loads(local)["usage_stats"]["seq_number"] == 0
    assert saved.session.local_copy_sha256 is not None
    assert saved.pending_digest(session.key) == saved.session.local_copy_sha256
    second = await cycle.run(session)
    assert second.result is Result.SENT
    assert [b["seq_number"] for b in endpoint.bodies()] == [0, 1]


async def test_a_stopped_head_is_refused_once_at_info(
    make_settings: Callable[..., Settings], endpoint: ScriptedEndpoint, temp_root: Path
) -> None:
    """Refused: nothing sent, one info event for the session, the hold says why."""
    make_session_dir(temp_root)  # its sockets directory is empty: the head is stopped
    env = {
        "RAY_USAGE_STATS_REPORT_URL": endpoint.url,
        "USAGESTATSD_DASHBOARD_ADDRESS": NO_DASHBOARD,
    }
    cycle = report_cycle(make_settings(env))
    session = the_session(temp_root)
    with capture_logs() as events:
        outcomes = [await cycle.run(session) for _ in range(2)]
    for outcome in outcomes:
        assert outcome.result is Result.REFUSED and outcome.refusal is not None
        assert outcome.refusal.kind is RefusalKind.NOT_RUNNING
        assert outcome.hold is not None and outcome.hold.why == NOT_RUNNING
        assert outcome.hold.status == f"Not reporting session {session.name}: {NOT_RUNNING}"
    assert outcomes[0].state_changed and not outcomes[1].state_changed  # origins, once
    [event] = named(events, "session.not_reported")
    assert event["log_level"] == "info" and event["reason"] == NOT_RUNNING
    assert named(events, "cluster.source_failed") == []
    assert endpoint.received == []


async def test_ray_reporting_by_itself_makes_it_stand_down(
    make_settings: Callable[..., Settings],
    endpoint: ScriptedEndpoint,
    demo_session: DemoCluster,
    temp_root: Path,
) -> None:
    """usage_stats.json written by Ray's own reporter: stand down, warned once, nothing sent."""
    session = the_session(temp_root)
    session.usage_stats_path.write_text('{"usage_stats": {"seq_number": 7}}')  # Ray's write
    cycle = report_cycle(make_settings({"RAY_USAGE_STATS_REPORT_URL": endpoint.url}))
    with capture_logs() as events:
        outcomes = [await cycle.run(session) for _ in range(2)]
    for outcome in outcomes:
        assert outcome.result is Result.STOOD_DOWN
        assert outcome.hold is not None and outcome.hold.why == STANDING_DOWN
        assert outcome.hold.status.startswith("Standing down: Ray's own reporter sends")
        assert outcome.beside is not None and outcome.beside.standing_down
        assert outcome.beside.arrangement == "direct"
    assert len(named(events, "beside_ray.standing_down")) == 1
    assert endpoint.received == []
    assert b'"seq_number": 7' in session.usage_stats_path.read_bytes()  # left as Ray wrote it


async def test_report_mode_reports_beside_ray(
    make_settings: Callable[..., Settings],
    endpoint: ScriptedEndpoint,
    demo_session: DemoCluster,
    temp_root: Path,
) -> None:
    """beside_ray = "report": the same session is reported, the arrangement still recorded."""
    session = the_session(temp_root)
    session.usage_stats_path.write_text('{"usage_stats": {"seq_number": 7}}')
    settings = make_settings(
        {"RAY_USAGE_STATS_REPORT_URL": endpoint.url, "USAGESTATSD_BESIDE_RAY": "report"}
    )
    outcome = await report_cycle(settings).run(session)
    assert outcome.result is Result.SENT and outcome.beside is not None
    assert (outcome.beside.arrangement, outcome.beside.standing_down) == ("direct", False)
    assert len(endpoint.received) == 1
