"""The daemon's real loop, in-process, on a virtual clock: real files, sockets, HTTP.

Time moves only from one of the loop's deadlines to the next (tests/support/fakeclock.py),
so an hour of slots, looks and watchdog pings runs in moments, and each report's time is
exact: nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from itertools import pairwise
from pathlib import Path

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from tests.faults.helpers import named
from tests.support.fakeclock import Driver, FakeClock
from tests.support.notify import NotifySocket
from tests.support.poll import until
from tests.support.processes import FREE_INTAKE
from tests.support.servers import ScriptedEndpoint
from usagestatsd.base.sdnotify import Notifier
from usagestatsd.cli.status import describe
from usagestatsd.config.settings import Settings
from usagestatsd.consent.decision import Decision
from usagestatsd.contract.guard import KnownIdentifiers
from usagestatsd.cycle.pipeline import Disclosure
from usagestatsd.demo import DemoCluster, make_session_dir, recorded_responses, serve_on_loopback
from usagestatsd.service.announce import clock_text
from usagestatsd.service.process import Daemon, build_daemon
from usagestatsd.service.schedule import Schedule
from usagestatsd.store.service_record import Inputs, RecordStore, new_record

HOUR = 3600.0
SEED = 7
PING_S = 10.0  # WATCHDOG_USEC of 20 s: a ping every half of it
# A day after the recorded session started: Ray's reporter had its chance long ago.
WALL = 1_795_823_459.0 + 24 * HOUR


@pytest.fixture
def notify(temp_root: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(temp_root.parent / "notify")
    yield sock
    sock.sock.close()


@pytest.fixture
def loop_settings(
    make_settings: Callable[..., Settings], endpoint: ScriptedEndpoint, notify: NotifySocket
) -> Callable[..., Settings]:
    def build(url: str | None = None, **env: str) -> Settings:
        return make_settings(
            {
                "RAY_USAGE_STATS_REPORT_URL": url or endpoint.url,
                "RAY_USAGE_STATS_REPORT_INTERVAL_S": str(int(HOUR)),
                "USAGESTATSD_RAY_INTAKE": FREE_INTAKE,
                "NOTIFY_SOCKET": str(notify.path),
                "WATCHDOG_USEC": str(int(2 * PING_S * 1_000_000)),
                "WATCHDOG_PID": str(os.getpid()),
                **env,
            }
        )

    return build


DECISION = Decision(True, "environment", "RAY_USAGE_STATS_ENABLED", "1", "asked", "unset", None, ())


class Running:
    """A daemon serving in this event loop on a FakeClock, with its service record."""

    def __init__(self, settings: Settings, clock: FakeClock, notify: NotifySocket) -> None:
        self.clock = clock
        self.settings = settings
        notifier = Notifier(settings.notify_socket)
        self.notifier = notifier
        record = new_record(settings, DECISION, Inputs({}, {}, None))
        self.daemon: Daemon = build_daemon(
            settings,
            notifier,
            Disclosure(KnownIdentifiers()),
            clock=clock,
            rng=random.Random(SEED),
            record=record,
        )
        # The socket's queue is short (net.unix.max_dgram_qlen): read it as time moves.
        self.driver = Driver(self.daemon, clock, notify.drain)
        self.start = clock.now
        self.serving = asyncio.create_task(self.daemon.serve())

    async def stop(self) -> int:
        self.daemon.stop_requested.set()
        try:
            return await asyncio.wait_for(self.serving, 30)
        finally:
            self.notifier.close()


@pytest.fixture
async def running(
    loop_settings: Callable[..., Settings], notify: NotifySocket
) -> AsyncIterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(clock: FakeClock | None = None, **env: str) -> Running:
        started.append(Running(loop_settings(**env), clock or FakeClock(wall=WALL), notify))
        return started[-1]

    yield start
    for run in started:
        if not run.serving.done():
            assert await run.stop() == 0


def wall_ms(clock: FakeClock, monotonic: float) -> int:
    """The report time a cycle at `monotonic` stamps (the cycle's own conversion)."""
    return int((monotonic + clock.wall_offset) * 1000)


async def test_hourly_slots_report_at_their_virtual_times(
    running: Callable[..., Running],
    endpoint: ScriptedEndpoint,
    demo_session: DemoCluster,
    notify: NotifySocket,
) -> None:
    """First report a minute after start, then a random offset, then one per hour, exactly."""
    with capture_logs() as events:
        run = running()
        await run.driver.run_until(lambda: len(endpoint.received) >= 4, 4 * HOUR)
        end = run.clock.now
        assert await run.stop() == 0
    schedule = Schedule(HOUR, random.Random(SEED))
    slots = [schedule.first(run.start)]
    for _ in range(3):
        slots.append(schedule.after(slots[-1], slots[-1].due))
    bodies = endpoint.bodies()
    assert [b["collect_timestamp_ms"] for b in bodies] == [wall_ms(run.clock, s.due) for s in slots]
    assert [b["seq_number"] for b in bodies] == [0, 1, 2, 3]
    assert slots[0].due == run.start + 60
    assert [b.due - a.due for a, b in pairwise(slots[1:])] == pytest.approx([HOUR, HOUR])
    messages = notify.drain()
    # Each STATUS= after a report names the next slot, in local wall time.
    last = run.clock.wall_offset + slots[3].due
    assert f"STATUS=Last report {clock_text(last)} ok (seq 3); next " in "\n".join(messages)
    # A ping at every point of the watchdog's grid, and no wake-up off it: looks (every
    # minute) and reports ride on pings or come at their own slot.
    assert messages.count("WATCHDOG=1") == int((end - run.start) // PING_S) + 1
    slot_times = {s.due for s in slots}
    ticks = [(t - run.start) / PING_S for t in run.clock.wakeups if t not in slot_times]
    assert [t for t in ticks if abs(t - round(t)) > 1e-9] == []
    looks = named(events, "session.looked")
    assert len(looks) >= (end - run.start) // 60
    assert named(events, "cycle.crashed") == []


async def test_status_shows_the_next_slot_from_the_one_record(
    running: Callable[..., Running], endpoint: ScriptedEndpoint, demo_session: DemoCluster
) -> None:
    """After each report the service record holds the next slot; `status` shows that time."""
    run = running()
    schedule = Schedule(HOUR, random.Random(SEED))
    slots = [schedule.first(run.start)]
    for reports in (1, 2):

        def reported(n: int = reports) -> bool:
            return len(endpoint.received) >= n

        await run.driver.run_until(reported, 2 * HOUR)
        slots.append(schedule.after(slots[-1], slots[-1].due))
        record, _ = RecordStore(run.settings.state_dir).load()
        assert record is not None and record.next_report_ms == wall_ms(run.clock, slots[-1].due)
        info = describe(run.settings, DECISION)
        shown = time.localtime(record.next_report_ms / 1000)
        assert info["next_report"] == time.strftime("%Y-%m-%d %H:%M:%S %Z", shown)
    assert b"next_report_ms" not in (run.settings.state_dir / "state.json").read_bytes()


async def test_a_new_session_is_picked_up_at_once(
    running: Callable[..., Running], endpoint: ScriptedEndpoint, temp_root: Path
) -> None:
    """No session for five minutes; one appears: found without time moving, reported a minute on."""
    with capture_logs() as events:
        run = running()
        await run.driver.run_for(300)
        assert endpoint.received == []
        assert len(named(events, "session.missing")) == 1
        cluster = DemoCluster(make_session_dir(temp_root), recorded_responses())
        await cluster.start()
        try:
            appeared = run.clock.now
            await run.driver.settle()
            await until(lambda: bool(named(events, "session.found")), 10)
            assert run.clock.now == appeared  # inotify, not the next minute's look
            await run.driver.run_until(lambda: len(endpoint.received) >= 1, HOUR)
            assert await run.stop() == 0
        finally:
            await cluster.stop()
    [body] = endpoint.bodies()
    assert body["collect_timestamp_ms"] == wall_ms(run.clock, appeared + 60)


async def test_report_request_reports_at_once_or_says_why_not(
    running: Callable[..., Running], endpoint: ScriptedEndpoint, temp_root: Path
) -> None:
    """SIGUSR1 with no session is ignored with a reason; with one, it reports without waiting."""
    with capture_logs() as events:
        run = running()
        await run.driver.settle()
        os.kill(os.getpid(), signal.SIGUSR1)
        await until(lambda: bool(named(events, "report.request_ignored")), 10)
        cluster = DemoCluster(make_session_dir(temp_root), recorded_responses())
        await cluster.start()
        try:
            await until(lambda: bool(named(events, "session.found")), 10)
            asked = run.clock.now
            os.kill(os.getpid(), signal.SIGUSR1)
            await until(lambda: len(endpoint.received) == 1, 20)
            await run.driver.settle()
            assert await run.stop() == 0
        finally:
            await cluster.stop()
    [body] = endpoint.bodies()
    assert body["collect_timestamp_ms"] == wall_ms(run.clock, asked)
    assert [e["signal"] for e in named(events, "report.requested")] == ["SIGUSR1", "SIGUSR1"]


async def test_sigterm_during_a_cycle_ends_the_group(
    running: Callable[..., Running], demo_session: DemoCluster, notify: NotifySocket
) -> None:
    """A stop while the endpoint holds the report: the cycle is cancelled, serve() returns 0."""
    held = asyncio.Event()
    release = asyncio.Event()

    async def hold(request: web.Request) -> web.Response:
        held.set()
        await release.wait()
        return web.Response()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hold)
    runner, port = await serve_on_loopback(app)
    try:
        with capture_logs() as events:
            run = running(url=f"http://127.0.0.1:{port}/")
            await run.driver.settle()
            run.clock.move_to(run.start + 60)  # the first slot: the endpoint holds its report
            await until(held.is_set, 20)
            assert run.daemon.busy
            os.kill(os.getpid(), signal.SIGTERM)
            assert await asyncio.wait_for(run.serving, 30) == 0
    finally:
        release.set()
        await runner.cleanup()
    assert [e["signal"] for e in named(events, "daemon.stopping")] == ["SIGTERM"]
    assert len(named(events, "daemon.stopped")) == 1
    assert named(events, "cycle.crashed") == []
    assert "STOPPING=1\nSTATUS=Stopping" in notify.drain()
    stray = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    assert [t for t in stray if "Daemon" in repr(t.get_coro())] == []
