"""Sharing a head node with Ray's own reporter (see docs/beside-ray.md).

Ray's dashboard reports by itself whenever a cluster allows usage stats, and writes the
same `usage_stats.json`. Two reporters to one endpoint would double-count. The supported
arrangement: Ray is started with RAY_USAGE_STATS_REPORT_URL pointing at this daemon's
loopback *intake*, which accepts and discards Ray's reports, so only usagestatsd sends.
When Ray's reporter is seen sending elsewhere instead (it rewrote usage_stats.json and
nothing came to the intake), usagestatsd stands down for that session, unless the
operator said `beside_ray = "report"` (for example: usagestatsd sends only to an
enterprise endpoint, so nothing is counted twice). The intake itself is usagestatsd/intake.py.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import StrEnum


class Arrangement(StrEnum):
    """How Ray's own reporter and usagestatsd share this session."""

    ROUTED = "routed"  # Ray's reporter sends to our intake: only usagestatsd reports
    DIRECT = "direct"  # Ray's reporter sends elsewhere by itself
    UNKNOWN = "unknown"  # Ray's reporter has not been seen (yet)


@dataclass(frozen=True)
class RaySighting:
    """One report Ray's reporter POSTed to the intake."""

    received_ms: int
    session_start_ms: int | None
    seq_number: int | None


def digest(data: bytes) -> str:
    """SHA-256 of a file's bytes (how our own writes are recognised)."""
    return hashlib.sha256(data).hexdigest()


def classify(
    session_start_ms: int | None,
    sightings: list[RaySighting],
    local_copy: bytes | None,
    our_digests: set[str],
) -> Arrangement:
    """Decide the arrangement from what the intake saw and who wrote usage_stats.json."""
    if session_start_ms is not None and any(
        s.session_start_ms == session_start_ms for s in sightings
    ):
        return Arrangement.ROUTED
    if local_copy is not None and digest(local_copy) not in our_digests:
        return Arrangement.DIRECT
    return Arrangement.UNKNOWN


def parse_sighting(body: bytes, now_ms: int) -> RaySighting:
    """What is worth remembering from a report Ray POSTed (nothing else is kept)."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict):
        return RaySighting(now_ms, None, None)
    start, seq = doc.get("session_start_timestamp_ms"), doc.get("seq_number")
    return RaySighting(
        now_ms,
        start if isinstance(start, int) and not isinstance(start, bool) else None,
        seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
    )


class Neighbour:
    """What this daemon knows about Ray's reporter in the current session."""

    def __init__(self, mode: str, grace_s: float = 75.0) -> None:
        self.mode = mode  # "auto" or "report"
        self.grace_s = grace_s
        self.sightings: list[RaySighting] = []
        self.our_digests: set[str] = set()
        self.last_copy: bytes | None = None
        self.warned: set[str] = set()

    def new_session(self, remembered_digest: str | None, pending_digest: str | None = None) -> None:
        """Forget the previous session's copies; keep the digests of our own last writes.

        Sightings are kept: each names the session it belongs to (its start time), and
        Ray's first report of a new session can reach the intake before this daemon has
        followed the session; forgetting it then made the routed daemon stand down.
        """
        self.our_digests = {d for d in (remembered_digest, pending_digest) if d}
        self.last_copy = None

    def saw(self, sighting: RaySighting) -> None:
        """Ray's reporter POSTed to the intake."""
        self.sightings = [*self.sightings[-15:], sighting]

    def wrote(self, data: bytes) -> str:
        """We wrote usage_stats.json with `data`; returns its digest."""
        self.last_copy = data
        value = digest(data)
        self.our_digests = {*list(self.our_digests)[-3:], value}
        return value

    def grace_left_s(self, session_start_ms: int | None, now_ms: int) -> float:
        """Seconds still to wait so that Ray's first report (60 s after start) can be seen."""
        if self.mode != "auto" or session_start_ms is None:
            return 0.0
        left = (session_start_ms + self.grace_s * 1000 - now_ms) / 1000
        # More than the whole grace left means the session started "in the future": the wall
        # clock jumped back (or the cluster's clock or data is off). Never wait hours for it.
        return left if 0.0 < left <= self.grace_s else 0.0

    def arrangement(self, session_start_ms: int | None, local_copy: bytes | None) -> Arrangement:
        """The current arrangement (pure, from what has been seen)."""
        return classify(session_start_ms, self.sightings, local_copy, self.our_digests)

    def should_stand_down(self, arrangement: Arrangement) -> bool:
        """True when sending now would count this session twice at the same endpoint."""
        return self.mode == "auto" and arrangement is Arrangement.DIRECT
