"""A real Ray head for tests: `ray start`/`ray stop`, the provider, receivers in a thread.

Everything listens on 127.0.0.1 or on Unix sockets under a short temp root. The Ray CLI
and the provider run with the Ray venv's Python (``RAY_PYTHON``); usagestatsd itself runs
with the project's Python, as in production.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import DaemonProcess, daemon_env, end_process, start_daemon

REPO = Path(__file__).resolve().parents[2]
PROVIDER = REPO / "usagestatsd" / "provider.py"
# Measured step durations (seconds), printed in pytest's summary by tests/ray/conftest.py.
TIMINGS: dict[str, float] = {}
# Each `ray start` that failed and was tried again, with Ray's own logs: printed in the
# same summary, so a retried start is never hidden.
RETRIED_STARTS: list[str] = []


def ray_python_or_skip() -> str:
    """RAY_PYTHON, checked to import Ray; fail under CI=true, skip loudly otherwise."""
    python = os.environ.get("RAY_PYTHON", "")
    problem = None
    if not python:
        problem = "RAY_PYTHON is not set (run 'make test-ray', which installs Ray and sets it)"
    else:
        try:
            probe = subprocess.run(
                [python, "-c", "import ray; print(ray.__version__)"],
                capture_output=True,
                text=True,
                timeout=120,
            )
        except OSError as exc:
            problem = f"RAY_PYTHON={python} cannot be run: {exc}"
        else:
            if probe.returncode != 0:
                tail = probe.stderr.strip().splitlines()[-1:] or ["(no output)"]
                problem = f"Ray is not importable by RAY_PYTHON={python}: {tail[0]}"
    if problem is None:
        return python
    if os.environ.get("CI") == "true":
        pytest.fail(f"REAL-RAY SUITE CANNOT RUN under CI: {problem}", pytrace=False)
    pytest.skip(f"REAL-RAY SUITE NOT RUN: {problem}")


def clean_environ() -> dict[str, str]:
    """This process's environment without Ray's or usagestatsd's settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "USAGESTATSD_"))}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


PR_SET_CHILD_SUBREAPER = 36


def set_subreaper(on: bool) -> None:
    """Make this process adopt its orphaned descendants (Ray's daemons outlive `ray start`)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def _proc_stat(pid: int) -> tuple[str, str, int] | None:
    """(name, state, parent pid) of a process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = raw[raw.index("(") + 1 : raw.rindex(")")]
    state, ppid = raw[raw.rindex(")") + 2 :].split()[:2]
    return name, state, int(ppid)


def descendants(root: int) -> dict[int, str]:
    """Live (not zombie) descendants of `root`: pid → name."""
    table: dict[int, tuple[str, str, int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (info := _proc_stat(int(entry.name))) is not None:
            table[int(entry.name)] = info
    children: dict[int, list[int]] = {}
    for pid, (_, _, ppid) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, str] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        name, state, _ = table[pid]
        if state != "Z":
            found[pid] = name
        todo.extend(children.get(pid, []))
    return found


def reap(pids: Sequence[int]) -> None:
    """Collect the exit status of those `pids` that are our (adopted) children."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def ray_processes(marker: str) -> list[str]:
    """`pid name: command` of every live process whose command line names `marker`.

    Ray's processes (raylet, gcs_server, dashboard...) carry the temp root in their
    arguments, and the job's driver carries it in a comment.
    """
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        info = _proc_stat(int(entry.name))
        with contextlib.suppress(OSError):
            args = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if info is not None and info[1] != "Z" and marker in args:
                found.append(f"{entry.name} {info[0]}: {args[:160]}")
    return found


class RayHead:
    """One Ray head node under a private temp root, started and stopped with Ray's CLI."""

    def __init__(self, python: str, report_url: str, interval_s: int) -> None:
        self.python = python
        self.base = Path(tempfile.mkdtemp(prefix="usdray-", dir="/tmp"))
        self.root = self.base / "r"  # short: AF_UNIX paths are at most 108 bytes
        self.root.mkdir()
        self.home = self.base / "home"  # no ~/.ray/auth_token, so no token auth
        self.home.mkdir()
        self.report_url = report_url
        self.interval_s = interval_s
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.client_port = free_port()
        self.agent_port = free_port()
        self.provider: subprocess.Popen[bytes] | None = None
        self.provider_lines: list[str] = []
        self.starts = self.stops = 0
        self.not_ray: set[int] = set()  # our own processes among our descendants

    def env(self, usage_stats: bool = True) -> dict[str, str]:
        """The environment Ray's processes get (its reporter reads the RAY_USAGE_STATS_*)."""
        env = clean_environ()
        env.update(
            HOME=str(self.home),
            RAY_USAGE_STATS_REPORT_URL=self.report_url,
            RAY_USAGE_STATS_REPORT_INTERVAL_S=str(self.interval_s),
            RAY_USAGE_STATS_PROMPT_ENABLED="0",
        )
        if usage_stats:
            env["RAY_USAGE_STATS_ENABLED"] = "1"
        return env

    def cli(
        self,
        args: Sequence[str],
        usage_stats: bool = True,
        extra_env: Mapping[str, str] | None = None,
    ) -> str:
        """Run `ray <args>` with the Ray venv's Python; fail with its output if it fails."""
        cmd = [self.python, "-m", "ray.scripts.scripts", *args]
        env = {**self.env(usage_stats), **(extra_env or {})}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            raise AssertionError(
                f"{' '.join(args[:2])} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
                + self.failure_context()
            )
        return done.stdout + done.stderr

    def failure_context(self, lines: int = 15) -> str:
        """The load and the newest session's raylet and GCS log tails: why a head did not
        come up (the temp root is removed with the head, so they are kept in the failure)."""
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        parts = [f"\nload average (1, 5, 15 min): {load}"]
        session = self.session_dir()
        logs = session / "logs" if session is not None else None
        for name in ("raylet.out", "raylet.err", "gcs_server.out", "gcs_server.err"):
            path = logs / name if logs is not None else None
            if path is None or not path.exists():
                continue
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.relative_to(self.root)} (last {lines} lines)")
            parts.extend(tail)
        return "\n".join(parts)

    def start(self, usage_stats: bool = True) -> Path:
        """`ray start --head` on loopback; returns the new session directory.

        A head that fails to come up is stopped and started once more. Old Rays give
        their raylet a fixed 30 s to register, which a loaded machine can miss; what
        failed (with Ray's own logs) goes in RETRIED_STARTS, shown in the summary.
        """
        before = self.session_dir()
        began = time.monotonic()
        try:
            self.cli(self._start_args(usage_stats), usage_stats=usage_stats)
        except AssertionError as first:
            RETRIED_STARTS.append(str(first))  # with the load and log tails
            self.stop(force=True)
            if self.starts == 0:  # nothing depends on the ports yet: take fresh ones
                self.gcs_port, self.dashboard_port = free_port(), free_port()
                self.client_port, self.agent_port = free_port(), free_port()
            self.cli(self._start_args(usage_stats), usage_stats=usage_stats)
        self.starts += 1
        TIMINGS[f"ray start #{self.starts}"] = round(time.monotonic() - began, 1)
        session = self.session_dir()
        assert session is not None and session != before, "ray start made no new session"
        return session

    def _start_args(self, usage_stats: bool) -> list[str]:
        args = [
            "start",
            "--head",
            "--num-cpus=1",
            f"--temp-dir={self.root}",
            "--node-ip-address=127.0.0.1",
            f"--port={self.gcs_port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={self.client_port}",
            f"--dashboard-agent-listen-port={self.agent_port}",
        ]
        if not usage_stats:
            args.append("--disable-usage-stats")
        return args

    def ray_pids(self) -> dict[int, str]:
        """This head's processes: our descendants that are not our own daemons or provider."""
        return {
            pid: name for pid, name in descendants(os.getpid()).items() if pid not in self.not_ray
        }

    def stop(self, force: bool = False, grace_s: float = 30.0) -> None:
        """Stop this head as `ray stop [--force]` does, but only this head's processes.

        `ray stop` signals every Ray process of the user on the machine, another test's or
        helper's cluster included; this signals only the processes this head started (our
        descendants, by pid): raylet first, then the rest, gcs_server last; SIGTERM, then
        SIGKILL after the grace period (at once with `force`).
        """
        began = time.monotonic()
        procs = self.ray_pids()
        buckets = [
            [p for p, n in procs.items() if n == "raylet"],
            [p for p, n in procs.items() if n not in ("raylet", "gcs_server")],
            [p for p, n in procs.items() if n == "gcs_server"],
        ]
        for bucket in buckets:
            for pid in bucket:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL if force else signal.SIGTERM)
            deadline = time.monotonic() + grace_s / len(buckets)
            while time.monotonic() < deadline:
                reap(bucket)
                if not set(bucket) & set(self.ray_pids()):
                    break
                time.sleep(0.1)
        for pid in self.ray_pids():  # left after the grace period, or started meanwhile
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while (left := self.ray_pids()) and time.monotonic() < deadline:
            reap(list(left))
            time.sleep(0.1)
        reap(list(procs))
        self.stops += 1
        TIMINGS[f"stop head{' (force)' if force else ''} #{self.stops}"] = round(
            time.monotonic() - began, 1
        )

    def session_dir(self) -> Path | None:
        """Where session_latest points now."""
        link = self.root / "session_latest"
        return link.resolve() if link.is_symlink() else None

    def submit_job(self) -> str:
        """A job through the job-submission API whose driver calls ray.init() and sleeps."""
        # The comment names this head's directory, so a surviving driver can be found.
        driver = f"import ray, time; ray.init(); time.sleep(600)  # {self.base.name}"
        return self.cli(
            ["job", "submit", "--no-wait", "--", self.python, "-c", driver],
            extra_env={"RAY_ADDRESS": f"http://127.0.0.1:{self.dashboard_port}"},
        )

    def dashboard_json(self, path: str) -> Any:
        """GET one of the dashboard's TCP endpoints that record no usage tag."""
        import urllib.request

        url = f"http://127.0.0.1:{self.dashboard_port}{path}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read())

    def ray_session_id(self) -> str:
        """The session id Ray's own reports carry: the metadata's UUID up to Ray 2.20, the
        cluster id (GET /cluster_id, Ray 2.30+) after."""
        metadata = self.cluster_metadata()
        if metadata.get("sessionId"):
            return str(metadata["sessionId"])
        if metadata.get("session_id"):  # the GCS's spelling (the provider's, Ray 1.13-2.2)
            return str(metadata["session_id"])
        return str(self.dashboard_json("/cluster_id")["data"]["clusterId"])

    def ray_version(self) -> str:
        """The version of Ray this head runs."""
        return str(self.installed_version())

    def installed_version(self) -> str:
        """`ray.__version__` of this head's Python."""
        done = subprocess.run(
            [self.python, "-c", "import ray; print(ray.__version__)"],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        return done.stdout.strip()

    def cluster_metadata(self) -> dict[str, Any]:
        """What `ray start` recorded: from the dashboard (Ray 2.3+), else the provider's
        reading of the GCS (1.13 to 2.2 serve it over no HTTP)."""
        import urllib.error

        try:
            data: dict[str, Any] = self.dashboard_json("/api/v0/cluster_metadata")["data"]
            return data
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
        session = self.session_dir()
        assert session is not None
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(10)
        with sock:
            sock.connect(str(session / "sockets" / "usagestatsd_provider"))
            sock.sendall(b"GET /v1/usage HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        metadata: dict[str, Any] = json.loads(reply.partition(b"\r\n\r\n")[2])["cluster_metadata"]
        return metadata

    # -- the provider -------------------------------------------------------------

    def start_provider(self) -> None:
        """Run usagestatsd/provider.py with Ray's Python against this temp root."""
        self.provider = subprocess.Popen(
            [self.python, str(PROVIDER), "--temp-root", str(self.root), "--poll-interval", "0.5"],
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        proc = self.provider
        self.not_ray.add(proc.pid)

        def pump() -> None:
            assert proc.stderr is not None
            for raw in proc.stderr:
                self.provider_lines.append(raw.decode(errors="replace").rstrip("\n"))

        threading.Thread(target=pump, daemon=True).start()

    def stop_provider(self) -> None:
        """SIGTERM the provider and wait for it."""
        if self.provider is not None and self.provider.poll() is None:
            self.provider.send_signal(signal.SIGTERM)
            try:
                self.provider.wait(10)
            except subprocess.TimeoutExpired:
                self.provider.kill()
                self.provider.wait()

    def close(self) -> None:
        """Stop everything this head started and remove its files."""
        self.stop_provider()
        self.stop(force=True)
        shutil.rmtree(self.base, ignore_errors=True)


class Daemons:
    """usagestatsd processes started against one head; each with its own state directory."""

    def __init__(self, head: RayHead, interval_s: int) -> None:
        self.head = head
        self.interval_s = interval_s
        self.settings_file = head.base / "usagestatsd.toml"
        self.settings_file.write_text("")
        self.config = str(self.settings_file)
        self.running: list[DaemonProcess] = []
        self.made = 0

    def env(self, url: str, **extra: str) -> dict[str, str]:
        """A daemon environment for this head, reporting to `url`, with a fresh state dir."""
        self.made += 1
        state = self.head.base / f"state{self.made}"
        env = daemon_env(
            self.head.root,
            state,
            url,
            HOME=str(self.head.home),
            RAY_USAGE_STATS_REPORT_INTERVAL_S=str(self.interval_s),
        )
        # Ray's users' ~/.ray/config.json read as by default (ray disable-usage-stats must
        # count); the callers name the intake.
        del env["USAGESTATSD_RAY_CONFIG_FILES"], env["USAGESTATSD_RAY_INTAKE"]
        env.update(extra)
        return env

    def start(self, env: Mapping[str, str]) -> DaemonProcess:
        """`usagestatsd run --log-format json` as a real process."""
        daemon = start_daemon(env, settings_file=self.settings_file)
        self.head.not_ray.add(daemon.proc.pid)
        self.running.append(daemon)
        return daemon

    def status(self, env: Mapping[str, str]) -> dict[str, Any]:
        """`usagestatsd status --json` with the same settings as a daemon."""
        done = subprocess.run(
            [sys.executable, "-m", "usagestatsd", "status", "--json", "--config", self.config],
            env={**clean_environ(), **env},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        info: dict[str, Any] = json.loads(done.stdout)
        return info

    def stop_all(self) -> None:
        """SIGTERM every daemon (SIGKILL if one hangs)."""
        for daemon in self.running:
            end_process(daemon.proc, 10)
