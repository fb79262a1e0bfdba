"""Figure 5: the daemon beside Ray's dashboard on one real Ray head (tests/ray/harness.py)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

from bench import procstat
from bench.harness import Fixture, NotifySocket, daemon_env, start_daemon, stop
from bench.results import RayProcess, RayResult
from tests.ray.harness import RayHead, descendants, free_port, set_subreaper

NEWEST_RAY = Path("/var/cache/usagestatsd-ray/2.60.0/venv/bin/python")


def ray_python() -> str | None:
    """RAY_PYTHON (as `make test-ray` sets it), else the newest cached Ray venv, else None."""
    named = os.environ.get("RAY_PYTHON")
    if named:
        return named
    return str(NEWEST_RAY) if NEWEST_RAY.exists() else None


def _last_problems(log: Path) -> str:
    """The daemon's last few warnings, for a failure message."""
    events = []
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            doc = json.loads(line)
            if doc.get("level") in ("warning", "error"):
                events.append(f"{doc.get('event')}: {doc.get('problem') or doc.get('reason', '')}")
    return "the daemon's last warnings: " + (" | ".join(dict.fromkeys(events[-4:])) or "none")


def _measure_processes(pids: list[int]) -> list[RayProcess]:
    out = []
    for pid in pids:
        with contextlib.suppress(OSError, KeyError):
            out.append(
                RayProcess(procstat.cmdline(pid), procstat.rss_kib(pid), procstat.pss_kib(pid))
            )
    return out


def measure_ray(tmp: Path, python: str, cycles: int, quick: bool) -> RayResult:
    """A real head whose reporter posts to the daemon's intake; the daemon reports each second."""
    version = subprocess.run(
        [python, "-c", "import ray; print(ray.__version__)"], capture_output=True, text=True
    ).stdout.strip()
    receiver = Fixture(None, count_path="/usagestatsd")
    intake = f"127.0.0.1:{free_port()}"
    set_subreaper(True)  # Ray's daemons stay our descendants: stopped by pid, never `ray stop`
    head = RayHead(python, f"http://{intake}/", interval_s=60)
    head.not_ray.add(receiver.proc.pid)
    # The head is stopped by pid: every descendant that is not Ray's. The idle figure's
    # daemon, fixture and reference loop run meanwhile, and are ours, never Ray's.
    head.not_ray.update(descendants(os.getpid()))
    daemon = None
    try:
        head.start()
        notify = NotifySocket(tmp / "notify")
        env = daemon_env(tmp, head.root, receiver.endpoint, 1.0, notify.path, intake=intake)
        if quick:
            env["USAGESTATSD_BESIDE_RAY"] = "report"  # no wait for Ray's first report
        daemon = start_daemon(tmp, env)
        head.not_ray.add(daemon.pid)
        problem = ""
        try:
            k1 = receiver.wait_reports(3, 60 if quick else 150)
            a = procstat.sample(daemon.pid)
            k2 = receiver.wait_reports(k1 + cycles, 30 + cycles * 3)
            b = procstat.sample(daemon.pid)
        except RuntimeError as exc:
            # Memory is still worth comparing; say plainly that the daemon did not report.
            k1 = k2 = 0
            a = b = procstat.sample(daemon.pid)
            problem = f"{exc}; {_last_problems(tmp / 'daemon.log')}"
        d_rss, d_pss = procstat.rss_kib(daemon.pid), procstat.pss_kib(daemon.pid)
        processes = _measure_processes(sorted(head.ray_pids()))
        notify.close()
    finally:
        if daemon is not None:
            stop(daemon)
        head.close()
        receiver.close()
        set_subreaper(False)
    log_text = (tmp / "daemon.log").read_text(errors="replace")
    return RayResult(
        version=version,
        quick=quick,
        daemon_rss_kib=d_rss,
        daemon_pss_kib=d_pss,
        cycles=k2 - k1,
        cpu_ns=b.cpu_ns - a.cpu_ns,
        processes=processes,
        absorbed=log_text.count('"beside_ray.report_absorbed"'),
        stood_down=log_text.count('"beside_ray.standing_down"'),
        problem=problem,
    )
