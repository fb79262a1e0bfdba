"""Real collector processes and a throwaway PostgreSQL server for the collector's tests."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.poll import wait_until
from tests.support.processes import end_process, first_line, spawn_logged

REPORT = Path(__file__).parents[2] / "usagestatsd" / "demo" / "data" / "report_payload.json"


def sample_report(session_id: str = "ab" * 16, seq: int = 0, **changes: Any) -> dict[str, Any]:
    """The recorded Ray 2.60 report with a chosen session and seq_number."""
    body: dict[str, Any] = json.loads(REPORT.read_text())
    body.update(session_id=session_id, seq_number=seq, **changes)
    return body


@dataclass
class Answer:
    """An HTTP answer as a sender sees it."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body decoded."""
        return json.loads(self.body)


def http(url: str, body: bytes | None = None, headers: Mapping[str, str] | None = None) -> Answer:
    """One request with urllib (GET without a body, POST with one); never raises on 4xx/5xx."""
    request = urllib.request.Request(url, data=body, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return Answer(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, dict(exc.headers), exc.read())


@dataclass
class CollectorProcess:
    """A running `usagestatsd-collector serve`, its URL and every log line it wrote."""

    proc: subprocess.Popen[bytes]
    lines: list[str]
    url: str
    state_dir: Path
    pump: threading.Thread

    def post(self, report: Any, path: str = "", headers: Mapping[str, str] | None = None) -> Answer:
        """POST a report (dict, or raw bytes) to the collector."""
        body = report if isinstance(report, bytes) else json.dumps(report).encode()
        return http(self.url + path, body, {"Content-Type": "application/json", **(headers or {})})

    def get(self, path: str) -> Answer:
        """GET a path."""
        return http(self.url + path.lstrip("/"))

    def events(self, name: str | None = None, at_least: int = 0) -> list[dict[str, Any]]:
        """The JSON log events so far (only `name`, when given), waiting up to 10 s until
        there are `at_least` of them: a line is written after the answer is sent."""

        def matching() -> list[dict[str, Any]]:
            out = []
            for line in list(self.lines):
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if name is None or event.get("event") == name:
                        out.append(event)
            return out

        wait_until(lambda: len(matching()) >= at_least, 10, fail=False, interval=0.02)
        return matching()

    def stop(self) -> int:
        """SIGTERM and wait; the exit status (every log line has been read by then)."""
        code = end_process(self.proc, 10)
        self.pump.join(10)
        return code


def run_collector(
    args: Sequence[str] = (), env: Mapping[str, str] | None = None, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    """Run the console command to completion (for usage and configuration errors)."""
    return subprocess.run(
        [sys.executable, "-m", "usagestatsd.collector", *args],
        env={**_base_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _base_env() -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV")
    return {k: v for k, v in os.environ.items() if k in keep}


def start_collector(
    state_dir: Path,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    config: Path | None = None,
) -> CollectorProcess:
    """Start a collector on a free port of 127.0.0.1 with JSON logs; returns once it listens."""
    cmd = [sys.executable, "-m", "usagestatsd.collector", "serve", "--log-format", "json"]
    cmd += ["--config", str(config) if config else os.devnull, "--state-dir", str(state_dir)]
    if not any(a.startswith("--listen") for a in args):
        cmd += ["--listen", "127.0.0.1:0"]
    proc, lines, reader = spawn_logged([*cmd, *args], {**_base_env(), **(env or {})})
    listening = first_line(proc, lines, '"collector.listening"', 30)
    if listening is None:
        proc.kill()
        raise AssertionError("collector did not start:\n" + "\n".join(lines))
    return CollectorProcess(proc, lines, json.loads(listening)["url"], state_dir, reader)


@contextlib.contextmanager
def running_collector(
    state_dir: Path,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    config: Path | None = None,
) -> Iterator[CollectorProcess]:
    """A collector for the duration of a with-block; always stopped."""
    collector = start_collector(state_dir, args, env, config)
    try:
        yield collector
    finally:
        collector.stop()


# ---------------------------------------------------------------------------
# PostgreSQL: a throwaway cluster in a temp dir, run as an unprivileged user.


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian's layout), if any."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PostgresServer:
    """A running throwaway cluster and its DSN."""

    directory: Path
    bindir: Path
    user: str
    port: int

    @property
    def dsn(self) -> str:
        """Where the collector connects (trust authentication, loopback only)."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def restart(self) -> None:
        """Restart the server (every client connection is cut)."""
        data = str(self.directory / "data")
        log = str(self.directory / "log")
        self._as_user(
            [str(self.bindir / "pg_ctl"), "-D", data, "-l", log, "-m", "fast", "-w", "restart"]
        )

    def stop(self) -> None:
        """Stop fast and remove the directory."""
        self._as_user(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.directory / "data"),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
            check=False,
        )
        shutil.rmtree(self.directory, ignore_errors=True)

    def _as_user(self, cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        account = pwd.getpwnam(self.user)
        return subprocess.run(
            cmd,
            user=account.pw_uid if os.geteuid() == 0 else None,
            group=account.pw_gid if os.geteuid() == 0 else None,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
            cwd="/",
        )


def start_postgres(durable: bool = False) -> PostgresServer | str:
    """Start a throwaway PostgreSQL, or say why it cannot be had.

    Tests run it without fsync (fast, disposable); the bench keeps the defaults (durable).
    """
    bindir = postgres_bin()
    if bindir is None:
        return (
            "no PostgreSQL server binaries (apt-get install postgresql; make test-collector does)"
        )
    # initdb refuses root: run the cluster as Debian's postgres user, else as nobody.
    user = "postgres"
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        user, account = "nobody", pwd.getpwnam("nobody")
    if os.geteuid() not in (0, account.pw_uid):
        user = pwd.getpwuid(os.geteuid()).pw_name
    directory = Path(tempfile.mkdtemp(prefix="usd-pg-", dir="/tmp"))
    if os.geteuid() == 0:
        os.chown(directory, account.pw_uid, account.pw_gid)
    server = PostgresServer(directory, bindir, user, _free_port())
    data = str(directory / "data")
    try:
        server._as_user(
            [
                str(bindir / "initdb"),
                "-D",
                data,
                "-U",
                user,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        )
        options = f"-p {server.port} -c listen_addresses=127.0.0.1 -k {directory}"
        if not durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        server._as_user(
            [
                str(bindir / "pg_ctl"),
                "-D",
                data,
                "-o",
                options,
                "-l",
                str(directory / "log"),
                "-w",
                "start",
            ]
        )
    except (subprocess.CalledProcessError, OSError) as exc:
        shutil.rmtree(directory, ignore_errors=True)
        detail = getattr(exc, "stderr", "") or str(exc)
        return f"PostgreSQL would not start: {detail.strip()[:300]}"
    return server


# ---------------------------------------------------------------------------
# A small fleet over the last days, stored directly, for the page's tests and screenshots.

FLEET_VERSIONS = ("2.60.0", "2.47.1", "2.44.1", "2.40.0")
FLEET_LIBRARIES = ("train", "tune", "serve", "data", "rllib")
FLEET_CLOUDS = (
    ("aws", "m5.2xlarge", "g5.12xlarge"),
    ("gcp", "n2-standard-8", "a2-highgpu-1g"),
    ("kubernetes", None, None),
    ("unknown", None, None),
)
# The operator tag some heads set (usagestatsd's extra_tags); every fourth cluster has none.
FLEET_TEAMS = ("ml-platform", "search", "recsys", None)
# A real library name of Ray's longer than a chart label's line.
LONG_LIBRARY = "util.multiprocessing.Pool"


def populate(state_dir: Path, sessions: int = 40, days: int = 14) -> list[str]:
    """Store a varied fleet in the SQLite database of `state_dir`; returns the session ids."""
    from usagestatsd.collector.store import DAY_MS
    from usagestatsd.collector.store_sqlite import SqliteStore
    from usagestatsd.collector.validate import Accepted, validate

    store = SqliteStore(state_dir / "collector.sqlite3")
    store.migrate()
    now = int(time.time() * 1000)
    ids = []
    for n in range(sessions):
        sid = f"{n:04x}" + "c0ffee" * 4 + "beef"  # 32 hex digits, as a uuid4 session_id
        ids.append(sid)
        cloud, head, worker = FLEET_CLOUDS[n % len(FLEET_CLOUDS)]
        nodes = (1, 2, 4, 8, 32, 100)[n % 6]
        changes: dict[str, Any] = {
            "ray_version": FLEET_VERSIONS[min(n % 7, 3)],
            "library_usages": sorted(
                {FLEET_LIBRARIES[n % 5], FLEET_LIBRARIES[(n * 3) % 4]}
                | ({LONG_LIBRARY} if n % 3 == 0 else set())
            ),
            "cloud_provider": cloud,
            "head_node_instance_type": head,
            "worker_node_instance_types": [worker] if worker else None,
            "total_num_nodes": nodes,
            "total_num_cpus": nodes * 8,
            "total_num_gpus": nodes * (n % 3) or None,
        }
        team = FLEET_TEAMS[n % len(FLEET_TEAMS)]
        tags = sample_report()["extra_usage_tags"] | ({"team": team} if team else {})
        start = n % days
        for day in range(start, min(days, start + 1 + n % 5)):
            seq = day - start
            # What a running cluster's reports change from one to the next: its task count.
            changes["extra_usage_tags"] = tags | {"num_normal_tasks": str(seq * 40)}
            body = json.dumps(sample_report(sid, seq, **changes)).encode()
            result = validate(body, 1 << 16)
            assert isinstance(result, Accepted)
            store.ingest([result], now - (days - 1 - day) * DAY_MS)
    store.close()
    return ids


def chromium() -> str | None:
    """Debian's chromium, if installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_run(url: str, profile: Path, *how: str) -> subprocess.CompletedProcess[str]:
    """Headless chromium on a 127.0.0.1 URL (no sandbox: tests run as root)."""
    browser = chromium()
    assert browser is not None
    return subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            *how,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
