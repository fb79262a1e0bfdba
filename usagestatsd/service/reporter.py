"""What the daemon reports on and when, and what it says around each report.

The report side of the daemon, below its loop (service/process.py): it starts the intake Ray's
reporter POSTs to and the inotify watch on the temp root, follows the session
(service/follow.py), hands each sighting of Ray's reporter to the policy beside it
(cycle/beside_ray.py), runs one cycle when the loop says a report is due (cycle/run.py), plans the
next one, saves the state, and tells systemd and `status` what happened (service/announce.py).
"""

from __future__ import annotations

import asyncio
import os
import random

import structlog

from usagestatsd.base.hostport import host_port
from usagestatsd.base.sdnotify import Notifier
from usagestatsd.config.settings import Settings
from usagestatsd.cycle.beside_ray import BesideRay, RaySighting
from usagestatsd.cycle.pipeline import Disclosure
from usagestatsd.cycle.run import Clock, CycleOutcome, ReportCycle
from usagestatsd.facts.session import Session
from usagestatsd.facts.watch import SessionWatch
from usagestatsd.service.announce import Announcer
from usagestatsd.service.follow import SessionFollower
from usagestatsd.service.intake import RayIntake
from usagestatsd.service.intake_socket import INTAKE_FD_NAME, inherited_sockets
from usagestatsd.service.schedule import Schedule, Slot
from usagestatsd.store.published import Publisher
from usagestatsd.store.service_record import ServiceRecord

log = structlog.get_logger()


class Reporter:
    """The followed session, its report slots and cycles, the intake and the watch."""

    def __init__(
        self,
        settings: Settings,
        notifier: Notifier,
        disclosure: Disclosure,
        clock: Clock,
        rng: random.Random,
        record: ServiceRecord | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.announce = Announcer(notifier, settings.temp_root, settings.state_dir, record)
        self.follower = SessionFollower(settings, Schedule(settings.report_interval_s, rng))
        self.beside = BesideRay(settings.beside_ray, lambda: self.follower.session)
        self.cycle = ReportCycle.open(settings, disclosure, self.beside, clock)
        self.published = Publisher(settings)  # every user's view (store/published.py)
        self.published.state = self.cycle.state
        self.nudge = asyncio.Event()  # look at the temp root now (a session appeared, see watch.py)
        self._intake: RayIntake | None = None
        self._watch: SessionWatch | None = None

    @property
    def session(self) -> Session | None:
        """The session followed now, if any."""
        return self.follower.session

    @property
    def slot(self) -> Slot | None:
        """Its next report slot (None: no report planned)."""
        return self.follower.slot

    async def start(self, look_s: float) -> None:
        """Listen for Ray's reporter and watch the temp root, then say READY=1."""
        if self.announce.service is not None:  # from now on, every record is published
            self.announce.service.on_write = self.published.record_changed
            self.published.record_changed(self.announce.service.record)
        await self._start_intake()
        self._watch = self._watch_sessions(look_s)

    async def stop(self) -> None:
        """Close the watch and the intake, and say so."""
        if self._watch is not None:
            self._watch.close()
        self.announce.stopping()
        if self._intake is not None:
            await self._intake.stop()
        self.announce.stopped(int(self.clock.time() * 1000))

    async def _start_intake(self) -> None:
        """The intake (docs/beside-ray.md), then READY=1 with what the daemon waits for."""
        waiting = self.announce.waiting_text()
        passed = inherited_sockets(os.environ)
        if self.settings.ray_intake is not None:
            host, port = self.settings.ray_intake
            intake = RayIntake(
                host,
                port,
                self._on_sighting,
                self.follower.ray_uids,
                inherited=passed.pop(INTAKE_FD_NAME, []),
                on_change=self._intake_changed,
                why_not_replaced=self.beside.why_not_replaced,
            )
            # Kept while it retries a taken port, so that stop() ends the retries too.
            self._intake = intake
            if not await intake.start():
                waiting += (
                    f" (intake {host_port(host, port)} not listening: Ray cannot be routed here)"
                )
            self._intake_changed(intake)
        for socks in passed.values():  # ray_intake = "off", or a socket of another name
            for sock in socks:
                sock.close()
        self.announce.ready(waiting)

    def _intake_changed(self, intake: RayIntake) -> None:
        """The intake listens, or not (its port taken): tell `status` and the policy."""
        self.announce.intake(intake)
        self.beside.listening_at(intake.url if intake.listening else None, intake.taken)

    def _watch_sessions(self, look_s: float) -> SessionWatch | None:
        """Notice a new session when Ray creates it (inotify), not at the next look."""
        watch = SessionWatch(self.settings.temp_root, self.nudge.set)
        problem = watch.start(asyncio.get_running_loop())
        if problem is None:
            return watch
        fallback = f"the temp root is looked at every {look_s:g} s"
        log.info("session_watch.unavailable", problem=problem, fallback=fallback)
        return None

    def _on_sighting(self, sighting: RaySighting) -> None:
        """Ray's reporter reached the intake; before our first report: send ours right away."""
        self.beside.saw(sighting)
        session, remembered = self.follower.session, self.cycle.state.session
        if session is None or (
            remembered and remembered.key == session.key and remembered.counters.seq_number
        ):
            return  # this session was reported already (e.g. on SIGUSR1): nothing to pull
        if self.follower.pull_first(self.clock.monotonic()):
            self.nudge.set()

    def look(self, now: float) -> None:
        """Look at the temp root: a new session gets its first slot, and is announced."""
        change = self.follower.follow(now)
        if change is None:
            return
        if change.session is None or change.first_due is None:
            self.announce.no_session(change.untrusted)
            return
        state, key = self.cycle.state, change.session.key
        remembered = state.session if state.session and state.session.key == key else None
        self.beside.new_session(
            remembered.local_copy_sha256 if remembered else None,
            state.pending_digest(key),
            remembered.ray_routed if remembered else False,
        )
        first = self.clock.time() + (change.first_due - now)
        self.announce.session_found(change.session.name, first)

    async def report(self, session: Session, advance: bool) -> None:
        """One cycle, then the next slot, the service record and STATUS=, and the state saved.

        `advance`: the cycle ran for its slot (not on request), so the next slot follows.
        """
        self.announce.cycle_started()
        outcome: CycleOutcome | None = None
        try:
            outcome = await self.cycle.run(session)
            if outcome.beside is not None:
                self.announce.beside(outcome.beside)
            if outcome.hold is not None:
                self.announce.hold(session.name, outcome.hold)
        finally:
            if advance:
                self.follower.advance(session, self.clock.monotonic())
            slot = self.follower.slot
            if slot is not None and not self.announce.holding:  # held: no report planned
                next_wall = self.clock.time() + (slot.due - self.clock.monotonic())
                self.announce.planned(next_wall, self.cycle.state.last_report)
            # Interrupted (SIGTERM, a bug): what it changed so far is saved too.
            if outcome is None or outcome.state_changed:
                self.cycle.save()
            self.published.state_changed(self.cycle.state)
