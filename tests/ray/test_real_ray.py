"""Against a real Ray head of any version from 2.9: our report equals Ray's own, field by
field (docs/real-ray.md). `make test-ray RAY_VERSION=X` picks the version.

One head is started for the whole module and restarted twice (a new session, then one
with usage stats disabled). Ray's reporter sends every INTERVAL_S seconds, first to
receiver A, later to usagestatsd's intake; usagestatsd sends to receiver B. The tests run
in file order and build on each other's cluster state.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.journey.compare import MEMORY, failed, field_checks
from tests.ray.harness import (
    TIMINGS,
    Daemons,
    RayHead,
    ray_processes,
    ray_python_or_skip,
    set_subreaper,
)
from tests.support.poll import wait_until
from tests.support.processes import DaemonProcess
from tests.support.servers import ThreadedEndpoint
from usagestatsd.contract.fields import ray_release
from usagestatsd.contract.ray_support import METADATA_OVER_HTTP

pytestmark = pytest.mark.slow

INTERVAL_S = 5


class Lab:
    """The module's shared world: receivers, the head, the provider, daemons, timings."""

    def __init__(self, python: str) -> None:
        self.began = time.monotonic()
        self.receiver_a = ThreadedEndpoint()  # where Ray's reporter sends at first
        self.receiver_b = ThreadedEndpoint()  # where usagestatsd sends
        self.head = RayHead(python, self.receiver_a.url, INTERVAL_S)
        self.daemons = Daemons(self.head, INTERVAL_S)
        self.routed: DaemonProcess | None = None
        self.routed_env: dict[str, str] = {}
        self.timings = TIMINGS

    def mark(self, name: str, since: float) -> None:
        """Record how long a step took (printed at the end of the module)."""
        self.timings[name] = round(time.monotonic() - since, 1)

    def explain(self) -> str:
        """The routed daemon's and the provider's recent log lines, for failure messages."""
        lines = self.routed.lines[-60:] if self.routed else []
        return "\n".join(["daemon:", *lines, "provider:", *self.head.provider_lines[-20:]])

    def close(self) -> None:
        """Stop daemons, the provider and Ray; close the receivers."""
        self.daemons.stop_all()
        self.head.close()
        self.receiver_a.close()
        self.receiver_b.close()


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """A Ray head with usage stats on, reporting to receiver A, and the provider beside it."""
    python = ray_python_or_skip()
    set_subreaper(True)  # Ray's processes stay our descendants, so we stop only ours
    world = Lab(python)
    try:
        world.head.start()
        world.head.start_provider()
        yield world
    finally:
        world.close()
        set_subreaper(False)
        world.timings["module_total"] = round(time.monotonic() - world.began, 1)


def provider_socket(head: RayHead) -> Path:
    """The provider's socket in the current session."""
    session = head.session_dir()
    assert session is not None
    return session / "sockets" / "usagestatsd_provider"


def b_bodies_since(lab: Lab, start: int) -> list[dict[str, Any]]:
    """Reports receiver B got from index `start` on."""
    return lab.receiver_b.bodies()[start:]


def assert_no_state_api_tags(bodies: list[dict[str, Any]]) -> None:
    """No report carries a tag that Ray records when its state API is used."""
    for body in bodies:
        tags = body.get("extra_usage_tags") or {}
        assert not [k for k in tags if k.startswith("core_state_api")], tags


# The field groups of the compatibility table (docs/real-ray.md), and their fields.
GROUPS: dict[str, tuple[str, ...]] = {
    "versions": ("ray_version", "python_version"),
    "git commit": ("git_commit",),
    "os, libc": ("os", "libc_version"),
    "session start": ("session_start_timestamp_ms",),
    "CPUs, GPUs": ("total_num_cpus", "total_num_gpus"),
    "memory, object store": MEMORY,
    "nodes": ("total_num_nodes",),
    "running jobs": ("total_num_running_jobs",),
    "library usages": ("library_usages",),
    "hardware usages": ("hardware_usages",),
    "session id": ("session_id",),
    "extra tag keys": ("extra_usage_tags",),
}


def _same(name: str, ours: Any, ray: Any) -> bool:
    if name in MEMORY and ours is not None and ray is not None:
        return bool(abs(ours - ray) <= 0.01 * abs(ray))
    if name == "library_usages":
        return set(ours) == set(ray)
    if name == "extra_usage_tags":
        return set(ours) == set(ray)
    return bool(ours == ray)


def record_comparison(ray: dict[str, Any], ours: dict[str, Any]) -> None:
    """Write group -> equal/null/differs to $USAGESTATSD_MATRIX_OUT (make test-ray-matrix)."""
    out = os.environ.get("USAGESTATSD_MATRIX_OUT")
    if not out:
        return
    table = {}
    for group, names in GROUPS.items():
        # A field this Ray's own report lacks (fields.ray_keys) must be absent from ours too.
        if any((n in ours) != (n in ray) for n in names):
            table[group] = "differs"
            continue
        names = tuple(n for n in names if n in ray)
        if not names:
            table[group] = "not in this Ray"
        elif not all(_same(n, ours[n], ray[n]) for n in names):
            table[group] = "differs"
        elif all(ray[n] in (None, [], {}) for n in names):
            table[group] = "null"
        else:
            table[group] = "equal"
    Path(out).write_text(json.dumps({"ray_version": ray["ray_version"], "groups": table}))


def test_report_matches_rays_own_field_by_field(lab: Lab) -> None:
    """With a job running, our report and Ray's agree on every field that is not a counter."""
    head, a, b = lab.head, lab.receiver_a, lab.receiver_b
    since = time.monotonic()
    head.submit_job()
    before = a.count()

    def shows_job(body: dict[str, Any]) -> bool:
        if "total_num_running_jobs" not in body:  # Ray 1.13 reports neither jobs nor the
            return False  # job_submission library: any report after the submission will do
        return body["total_num_running_jobs"] == 1 and "job_submission" in body["library_usages"]

    wait_until(
        lambda: (
            any(shows_job(body) for body in a.bodies())
            or (a.count() >= before + 2 and "total_num_running_jobs" not in a.bodies()[-1])
        ),
        90,
        "Ray's report showing the submitted job running",
    )
    lab.mark("job_running_in_rays_report", since)
    # The last test looks for leftovers this way: here it must see Ray and the job's driver.
    running = ray_processes(head.base.name)
    for needle in (" raylet: ", " gcs_server: ", "time.sleep(600)"):
        assert any(needle in p for p in running), f"{needle!r} not among {running}"
    wait_until(provider_socket(head).exists, 30, "the provider's socket")

    since = time.monotonic()
    env = lab.daemons.env(b.url, USAGESTATSD_BESIDE_RAY="report", USAGESTATSD_RAY_INTAKE="off")
    daemon = lab.daemons.start(env)
    wait_until(lambda: b.count() >= 1, 30, "usagestatsd's first report at B")
    lab.mark("daemon_first_report", since)

    # Take ours right after one of Ray's: ask for a report as soon as A receives one.
    seen_a, seen_b = a.count(), b.count()
    wait_until(lambda: a.count() > seen_a, 3 * INTERVAL_S, "another report from Ray")
    daemon.proc.send_signal(signal.SIGUSR1)
    wait_until(lambda: b.count() > seen_b, 15, "usagestatsd's report on SIGUSR1")
    ray, ours = a.bodies()[seen_a], b.bodies()[seen_b]
    daemon.stop()

    record_comparison(ray, ours)
    # Ray's key order changed over versions (2.9 put schema_version third); ours is always
    # schema 0.1's, the current one. The comparison is the journey's (tests/e2e/journey).
    assert not failed(field_checks(ours, ray)), failed(field_checks(ours, ray))
    assert abs(ours["collect_timestamp_ms"] - ray["collect_timestamp_ms"]) < 5000
    if "total_num_running_jobs" in ray:  # not in 1.13's report, nor this library
        assert "job_submission" in ray["library_usages"]  # "core" too from Ray 2.44
    assert ray.get("total_num_running_jobs", 1) == 1  # 1.13 reports none
    ray_tags = ray.get("extra_usage_tags", {})
    # The session id is Ray's: the metadata's UUID up to 2.20, the cluster id after.
    ray_id = head.ray_session_id()
    assert ours["session_id"] == ray["session_id"] == ray_id
    assert re.fullmatch("[0-9a-f]{56}|[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", ray_id)
    # The sources each group came from, as status shows them.
    status = lab.daemons.status(env)
    assert status["session"]["ray_version"] == ray["ray_version"]
    facts_from = status["session"]["facts_from"]
    assert facts_from["gcs"] == "provider"
    if "total_num_nodes" in ray:  # 1.13's client cannot list nodes or jobs: the dashboard
        assert facts_from["nodes"] == facts_from["running_jobs"] == "provider"
    unix = (head.session_dir() or Path()).joinpath("sockets", "dash_ReportHead").exists()
    if ray_release(ray["ray_version"]) < METADATA_OVER_HTTP:  # type: ignore[operator]
        assert facts_from["metadata"] == "provider"  # Ray's GCS: no such path before 2.3
    else:
        assert facts_from["metadata"] == ("sockets" if unix else "dashboard HTTP")
    # Nothing usagestatsd asked made Ray record a usage tag.
    assert_no_state_api_tags(a.bodies() + b.bodies())
    if ray_tags:  # Ray 2.0 reported no tags on this head (and 1.13 has no such field)
        assert ray_tags.get("dashboard_used") == "False"
    print("\nRay's report:", json.dumps(ray, sort_keys=True))
    print("our report:  ", json.dumps(ours, sort_keys=True))


def test_ray_sending_directly_makes_the_daemon_stand_down(lab: Lab) -> None:
    """Ray's reporter sends to A by itself: usagestatsd (auto) stands down once, sends nothing."""
    a, b = lab.receiver_a, lab.receiver_b
    seen_b = b.count()
    since = time.monotonic()
    env = lab.daemons.env(b.url, USAGESTATSD_RAY_INTAKE="127.0.0.1:0")
    daemon = lab.daemons.start(env)
    # It waits until 75 s after the session started, then sees Ray's usage_stats.json.
    daemon.wait_for("beside_ray.standing_down", timeout=100)
    lab.mark("standing_down_after_daemon_start", since)
    seen_a = a.count()
    wait_until(lambda: a.count() >= seen_a + 2, 4 * INTERVAL_S, "two more reports from Ray")
    time.sleep(1)
    assert daemon.count("beside_ray.standing_down") == 1
    assert daemon.count("report.sent") == 0
    assert b.count() == seen_b, "usagestatsd sent while Ray's reporter sends directly"
    status = lab.daemons.status(env)
    assert status["beside_ray"]["arrangement"] == "direct"
    assert status["session"]["provider"] == "present"
    session = lab.head.session_dir()
    assert session is not None
    copy = json.loads((session / "usage_stats.json").read_bytes())["usage_stats"]
    assert copy in a.bodies(), "usage_stats.json is not Ray's own copy"
    daemon.stop()
    # Ray kept reporting while usagestatsd ran and read the cluster: still no state API tag.
    assert_no_state_api_tags(a.bodies())


def test_routed_ray_reports_into_the_intake(lab: Lab) -> None:
    """Ray's URL points at the intake: its reports are absorbed and only usagestatsd reaches B."""
    a, b = lab.receiver_a, lab.receiver_b
    port = a.port  # Ray's RAY_USAGE_STATS_REPORT_URL points here
    a.close()
    seen_b = b.count()
    since = time.monotonic()
    env = lab.daemons.env(b.url, USAGESTATSD_RAY_INTAKE=f"127.0.0.1:{port}")
    daemon = lab.daemons.start(env)
    lab.routed, lab.routed_env = daemon, env
    line = daemon.wait_for("beside_ray.intake_listening")
    assert json.loads(line)["url"] == f"http://127.0.0.1:{port}/"
    daemon.wait_for("beside_ray.report_absorbed", timeout=3 * INTERVAL_S)
    wait_until(lambda: b.count() >= seen_b + 1, 3 * INTERVAL_S, "usagestatsd's first report")
    lab.mark("routed_first_report", since)
    # After a later report of Ray's, usage_stats.json again holds what we sent.
    absorbed = daemon.count("beside_ray.report_absorbed")
    wait_until(
        lambda: daemon.count("beside_ray.report_absorbed") > absorbed,
        3 * INTERVAL_S,
        "another report from Ray at the intake",
    )
    session = lab.head.session_dir()
    assert session is not None

    def holds_our_copy() -> bool:
        copy = json.loads((session / "usage_stats.json").read_bytes())["usage_stats"]
        return copy in b_bodies_since(lab, seen_b)

    wait_until(holds_our_copy, 5, "usage_stats.json holding usagestatsd's copy")
    ours = b_bodies_since(lab, seen_b)
    assert [body["seq_number"] for body in ours] == list(range(len(ours)))
    assert all(body["source"] == "OSS" for body in ours)
    assert daemon.count("beside_ray.standing_down") == 0
    status = lab.daemons.status(env)
    assert status["beside_ray"]["arrangement"] == "routed"
    assert status["beside_ray"]["intake"] == f"http://127.0.0.1:{port}/"
    assert status["session"]["session_id"] == ours[-1]["session_id"]


def test_cluster_restart_starts_a_new_session(lab: Lab) -> None:
    """Stop, ray start again: the daemon follows with the new cluster id and counters from zero."""
    head, b, daemon = lab.head, lab.receiver_b, lab.routed
    assert daemon is not None, "needs the routed daemon of the previous test"
    old = lab.receiver_b.bodies()[-1]
    since = time.monotonic()
    head.stop()
    session = head.start()
    seen_b = b.count()
    cluster_id = head.ray_session_id()
    wait_until(
        lambda: any(body["session_id"] == cluster_id for body in b_bodies_since(lab, seen_b)),
        6 * INTERVAL_S,
        "a report about the new session",
        lab.explain,
    )
    lab.mark("restart_to_first_report", since)
    new = [
        body
        for body in b_bodies_since(lab, seen_b)
        if body["session_start_timestamp_ms"] != old["session_start_timestamp_ms"]
    ]
    # On failure, name every report since the restart: which id, seq and start time each had.
    seen = [
        (body["session_id"], body["seq_number"], body.get("session_start_timestamp_ms"))
        for body in b_bodies_since(lab, seen_b)
    ]
    why = f"new id {cluster_id}, old {old['session_id']}, reports since: {seen}\n{lab.explain()}"
    assert new[0]["session_id"] == cluster_id != old["session_id"], why
    assert (new[0]["seq_number"], new[0]["total_success"], new[0]["total_failed"]) == (0, 0, 0)
    assert all(body["session_id"] == cluster_id for body in new)
    assert new[0]["session_start_timestamp_ms"] > old["session_start_timestamp_ms"]
    assert new[0].get("total_num_running_jobs", 0) == 0
    assert daemon.count(str(session)) >= 1  # session.found names the new directory
    status = lab.daemons.status(lab.routed_env)
    assert status["session"]["dir"] == str(session)
    assert status["session"]["session_id"] == cluster_id
    assert status["beside_ray"]["arrangement"] == "routed"
    assert daemon.count("beside_ray.standing_down") == 0, lab.explain()


def test_cluster_with_usage_stats_disabled_is_not_reported(lab: Lab) -> None:
    """A head started with --disable-usage-stats: the daemon sends nothing for it."""
    head, b, daemon = lab.head, lab.receiver_b, lab.routed
    assert daemon is not None, "needs the routed daemon of the previous tests"
    since = time.monotonic()
    head.stop()
    session = head.start(usage_stats=False)
    seen_b = b.count()
    wait_until(
        lambda: any(
            e.get("event") == "session.not_reported" and e.get("session_dir") == str(session)
            for e in daemon.events()
        ),
        6 * INTERVAL_S,
        "session.not_reported for the disabled session",
        lab.explain,
    )
    lab.mark("disabled_to_not_reported", since)
    time.sleep(INTERVAL_S + 1)  # one more interval: still nothing
    assert b.count() == seen_b, "usagestatsd reported a cluster that disabled usage stats"
    assert not (session / "usage_stats.json").exists()


def test_nothing_of_ray_is_left_running(lab: Lab) -> None:
    """After stopping with --force nothing of Ray is left, not even the job driver; all exit 0."""
    since = time.monotonic()
    lab.daemons.stop_all()
    assert all(d.proc.returncode == 0 for d in lab.daemons.running)
    lab.head.stop_provider()
    assert lab.head.provider is not None and lab.head.provider.returncode == 0
    lab.head.stop(force=True)
    marker = lab.head.base.name  # in the command lines of Ray and of the job driver
    wait_until(
        # No raylet, gcs_server or any other process of this head (or of its job) is left.
        lambda: not ray_processes(marker) and not lab.head.ray_pids(),
        30,
        "Ray's processes to exit",
        lambda: "\n".join([*ray_processes(marker), f"descendants: {lab.head.ray_pids()}"]),
    )
    lab.mark("final_stop_and_leftover_check", since)
