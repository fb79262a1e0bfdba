"""Sharing a head node with Ray's own reporter (see docs/beside-ray.md).

Ray's dashboard reports by itself whenever a cluster allows usage stats, and writes the
same `usage_stats.json`. Two reporters to one endpoint would double-count. The supported
arrangement: Ray is started with RAY_USAGE_STATS_REPORT_URL pointing at this daemon's
loopback *intake*, which accepts and discards Ray's reports, so only usagestatsd sends.
When Ray's reporter is seen sending elsewhere instead (it rewrote usage_stats.json and
nothing came to the intake), usagestatsd stands down for that session, unless the
operator said `beside_ray = "report"` (for example: usagestatsd sends only to an
enterprise endpoint, so nothing is counted twice). The intake itself is
usagestatsd/service/intake.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import structlog

from usagestatsd.facts.session import Session, read_usage_stats, still_there, write_usage_stats
from usagestatsd.store.service_record import Beside

log = structlog.get_logger()
REWRITE_DELAY_S = 1.0
UNDECIDED = (
    "usagestatsd has not decided yet whether it reports this session "
    "(it has not looked at the cluster since the session began)"
)


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
    routed_before: bool = False,
    intake_taken: bool = False,
) -> Arrangement:
    """Decide the arrangement from what the intake saw and who wrote usage_stats.json.

    `routed_before`: an earlier run of the daemon saw this session routed. That holds for
    the whole session (Ray reads RAY_USAGE_STATS_REPORT_URL once, when it starts), while
    Ray's next report to the intake may be an hour away.

    `intake_taken`: another socket holds the intake's port. Ray routed to the intake then
    reports to that socket and rewrites usage_stats.json as if it had sent directly: a
    report to an intake this daemon does not hold is no sign of either, so it is UNKNOWN.
    """
    if routed_before or (
        session_start_ms is not None
        and any(s.session_start_ms == session_start_ms for s in sightings)
    ):
        return Arrangement.ROUTED
    if local_copy is not None and digest(local_copy) not in our_digests and not intake_taken:
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
        self.routed_before = False  # state.json says the followed session was seen routed
        self.intake_taken = False  # another socket holds the intake's port

    def new_session(
        self,
        remembered_digest: str | None,
        pending_digest: str | None = None,
        routed_before: bool = False,
    ) -> None:
        """Forget the previous session's copies; keep the digests of our own last writes.

        Sightings are kept: each names the session it belongs to (its start time), and
        Ray's first report of a new session can reach the intake before this daemon has
        followed the session; forgetting it then made the routed daemon stand down.
        """
        self.our_digests = {d for d in (remembered_digest, pending_digest) if d}
        self.last_copy = None
        self.routed_before = routed_before

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
        return classify(
            session_start_ms,
            self.sightings,
            local_copy,
            self.our_digests,
            self.routed_before,
            self.intake_taken,
        )

    def should_stand_down(self, arrangement: Arrangement) -> bool:
        """True when sending now would count this session twice at the same endpoint."""
        return self.mode == "auto" and arrangement is Arrangement.DIRECT


@dataclass(frozen=True)
class StandDown:
    """This cycle's decision beside Ray's reporter: the record for `status`, and the hold."""

    beside: Beside  # the arrangement as service.json records it
    status: str | None  # the STATUS= line while standing down; None: report as usual


class BesideRay:
    """The whole policy beside Ray's own reporter for the followed session (docs/beside-ray.md).

    It hears each report Ray's reporter POSTs to the intake (`saw`), waits for Ray's first
    report early in a session (`wait_for_ray`), decides whether to stand down (`decide`),
    remembers our own writes of usage_stats.json (`wrote`) and puts our copy back when Ray
    overwrites it. `current` names the session the daemon follows now.
    """

    def __init__(
        self, mode: str, current: Callable[[], Session | None], grace_s: float = 75.0
    ) -> None:
        self._neighbour = Neighbour(mode, grace_s)
        self._current = current
        self._seen = asyncio.Event()  # set on every report Ray's reporter POSTs to the intake
        self._warned: set[str] = set()  # sessions whose stand-down was logged already
        self._rewrite_pending = False  # one put-back of usage_stats.json at a time
        self._intake_url: str | None = None
        # For the followed session: (its key, why usagestatsd does not report it, or None).
        self._verdict: tuple[str, str | None] | None = None
        self._decided = asyncio.Event()  # set whenever a cycle decides

    def listening_at(self, url: str | None, taken: bool = False) -> None:
        """The intake's URL, for the fix Ray needs (None: the intake does not listen), and
        whether another socket holds its port (then Ray's own writes prove nothing)."""
        self._intake_url = url
        self._neighbour.intake_taken = taken

    def routing_fix(self) -> str:
        """What makes Ray's reporter send to this daemon instead."""
        if self._intake_url is None:
            return "turn on and free this daemon's intake (ray_intake), then route Ray to it"
        return f"restart Ray with RAY_USAGE_STATS_REPORT_URL={self._intake_url}"

    def new_session(
        self, remembered_digest: str | None, pending_digest: str | None, routed_before: bool
    ) -> None:
        """The daemon follows a new session: our writes there are known by these digests, and
        `routed_before` says whether an earlier run saw Ray's reporter routed in it."""
        self._neighbour.new_session(remembered_digest, pending_digest, routed_before)
        self._verdict = None

    def decided(self, session: Session, why_not: str | None) -> None:
        """A cycle decided: usagestatsd reports `session` (None), or why it does not."""
        self._verdict = (session.key, why_not)
        self._decided.set()

    async def why_not_replaced(self, wait_s: float) -> str | None:
        """Why a report Ray's reporter POSTed will not be replaced by one of usagestatsd's,
        or None when usagestatsd reports the followed session (the report may be absorbed).

        The POST itself pulls the session's first cycle forward (service/reporter.py), so before
        the first decision this waits up to `wait_s` for it; still undecided, it is not
        absorbed either: absorbing a report nobody replaces would leave the session
        unreported everywhere.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            session = self._current()
            verdict = self._verdict
            if session is not None and verdict is not None and verdict[0] == session.key:
                return verdict[1]
            left = deadline - loop.time()
            if left <= 0:
                return UNDECIDED
            self._decided.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._decided.wait(), left)

    def wrote(self, data: bytes) -> str:
        """We wrote usage_stats.json with `data`; returns its digest."""
        value = self._neighbour.wrote(data)
        if self._neighbour.sightings:
            # Our first report of a session follows Ray's report to the intake at once, so
            # Ray's own write of the file (right after its POST) can land after ours.
            self._put_back_soon()
        return value

    def saw(self, sighting: RaySighting) -> None:
        """Ray's reporter POSTed to the intake: note it, and put our copy back after Ray's write."""
        self._neighbour.saw(sighting)
        self._seen.set()
        if self._neighbour.last_copy is not None:
            self._put_back_soon()

    def _put_back_soon(self) -> None:
        """Ray writes its own usage_stats.json right after its POST returns: put back the
        copy of what usagestatsd really sent, a moment later."""
        session = self._current()
        if session is None or self._rewrite_pending:
            return  # coalesced when pending: the put-back already due writes the same bytes
        self._rewrite_pending = True
        asyncio.get_running_loop().call_later(REWRITE_DELAY_S, self._rewrite, session)

    def _rewrite(self, session: Session) -> None:
        self._rewrite_pending = False
        data = self._neighbour.last_copy  # the newest copy, if a report was sent meanwhile
        if data is None or self._current() != session or not still_there(session):
            return
        if read_usage_stats(session) == data:
            return  # nobody replaced our copy: rewriting it would only wear the disk
        with contextlib.suppress(OSError):
            write_usage_stats(session, data)

    async def wait_for_ray(self, start_ms: int | None, now_ms: int) -> bool:
        """Early in a session, wait until Ray's reporter had its chance to show itself.

        True when it waited (the facts are then older than the wait: gather them again).
        """
        neighbour = self._neighbour
        wait = neighbour.grace_left_s(start_ms, now_ms)
        if wait <= 0 or neighbour.arrangement(start_ms, None) is Arrangement.ROUTED:
            return False
        log.info(
            "beside_ray.waiting",
            seconds=round(wait, 1),
            reason="Ray's own reporter sends its first report 60 s after the head starts",
        )
        # Ray's reporter may show up at the intake during the wait: then stop waiting.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while neighbour.arrangement(start_ms, None) is not Arrangement.ROUTED:
            left = deadline - loop.time()
            if left <= 0:
                break
            self._seen.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._seen.wait(), left)
        return True

    def decide(self, session: Session, start_ms: int | None) -> StandDown:
        """Report this session now, or stand down (logged once per session)?"""
        neighbour = self._neighbour
        arrangement = neighbour.arrangement(start_ms, read_usage_stats(session))
        standing_down = neighbour.should_stand_down(arrangement)
        last = neighbour.sightings[-1].received_ms if neighbour.sightings else None
        beside = Beside(neighbour.mode, session.name, arrangement.value, last, standing_down)
        if not standing_down:
            return StandDown(beside, None)
        fix = self.routing_fix()
        if session.key not in self._warned:
            self._warned.add(session.key)
            log.warning(
                "beside_ray.standing_down",
                session_dir=str(session.path),
                reason="Ray's own reporter is sending this session's reports itself",
                fix=fix + ' so that only usagestatsd sends, or set beside_ray = "report"',
            )
        status = f"Standing down: Ray's own reporter sends this session's reports; to report, {fix}"
        return StandDown(beside, status)
