"""What Ray itself produces, for tests: its recorded 2.60 replies, the report its reporter
POSTs, and the usage_stats.json copy it writes into the session directory."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from usagestatsd.demo import DemoCluster, make_session_dir, recorded, recorded_responses


def recorded_json(name: str) -> Any:
    """A recorded Ray 2.60 response, decoded."""
    return json.loads(recorded(name))


def ray_report(seq: int = 0) -> bytes:
    """The body Ray's reporter POSTs (its recorded 2.60 payload, this session's start)."""
    return json.dumps(dict(recorded_json("report_payload.json"), seq_number=seq)).encode()


def ray_style_copy(seq: int) -> bytes:
    """usage_stats.json as Ray's own reporter writes it when it sends by itself."""
    body = dict(recorded_json("report_payload.json"), seq_number=seq)
    return json.dumps({"usage_stats": body, "success": True, "error": None}).encode()


def session_started_now(temp_root: Path) -> tuple[DemoCluster, int]:
    """A demo session (not serving yet) whose Ray session began just now, and that start in
    ms: for what a daemon does within the first minutes of a session."""
    start_ms = int(time.time() * 1000)
    responses = recorded_responses()
    metadata = recorded_json("dash_report_cluster_metadata.json")
    metadata["data"]["sessionStartTimestampMs"] = start_ms
    responses["dash_ReportHead"]["/api/v0/cluster_metadata"] = json.dumps(metadata).encode()
    return DemoCluster(make_session_dir(temp_root), responses), start_ms
