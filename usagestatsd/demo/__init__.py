"""A demo Ray session and a local receiving endpoint, so the daemon can be seen working.

The demo cluster serves responses recorded from a real Ray 2.60 head on Unix sockets in a
session directory it creates, exactly where Ray's dashboard would put them. The receiver
listens on 127.0.0.1 only and prints each report it gets. Nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import tempfile
import time
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from usagestatsd.base.childproc import python_module

# socket name -> request path (without query) -> recorded file
RECORDED: dict[str, dict[str, str]] = {
    "dash_ReportHead": {
        "/api/v0/cluster_metadata": "dash_report_cluster_metadata.json",
        "/api/cluster_status": "dash_report_cluster_status.json",
    },
    "dash_NodeHead": {"/nodes": "dash_node_summary.json"},
    "dash_StateHead": {"/api/v0/nodes": "dash_state_nodes.json"},
    "dash_JobHead": {"/api/jobs/": "dash_job_list.json"},
}


def recorded(name: str) -> bytes:
    """One recorded Ray 2.60 file, shipped with the package."""
    return resources.files("usagestatsd.demo").joinpath("data", name).read_bytes()


def recorded_responses() -> dict[str, dict[str, bytes]]:
    """All recorded dashboard responses, by socket and path."""
    return {
        sock: {path: recorded(file) for path, file in paths.items()}
        for sock, paths in RECORDED.items()
    }


def make_session_dir(temp_root: Path, when: float | None = None) -> Path:
    """Create a Ray-like session directory and point session_latest at it."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(when or time.time()))
    micro = f"{int(((when or time.time()) % 1) * 1e6):06d}"
    temp_root.mkdir(parents=True, exist_ok=True)
    session = temp_root / f"session_{stamp}_{micro}_{os.getpid()}"
    (session / "sockets").mkdir(parents=True)
    (session / "logs").mkdir()
    latest = temp_root / "session_latest"
    tmp_link = temp_root / f".session_latest.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp_link.unlink()
    tmp_link.symlink_to(session)
    tmp_link.rename(latest)
    return session


class DemoCluster:
    """Serves recorded (or given) dashboard responses on Unix sockets in a session dir."""

    def __init__(
        self,
        session_dir: Path,
        responses: Mapping[str, Mapping[str, bytes]] | None = None,
    ) -> None:
        self.session_dir = session_dir
        self.responses = responses if responses is not None else recorded_responses()
        self._runners: list[web.AppRunner] = []

    def _app(self, routes: Mapping[str, bytes]) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            body = routes.get(request.path)
            if body is None:
                return web.Response(status=404, text="not found")
            return web.Response(body=body, content_type="application/json")

        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", handle)
        return app

    async def start(self) -> None:
        """Bind every socket; returns when all accept connections."""
        for name, routes in self.responses.items():
            runner = web.AppRunner(self._app(routes), access_log=None)
            await runner.setup()
            site = web.UnixSite(runner, str(self.session_dir / "sockets" / name))
            await site.start()
            self._runners.append(runner)

    async def stop(self) -> None:
        """Close every socket."""
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()


async def serve_on_loopback(app: web.Application, port: int = 0) -> tuple[web.AppRunner, int]:
    """Serve `app` on 127.0.0.1 (port 0 picks a free one); returns the runner and the port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, runner.addresses[0][1]


class Receiver:
    """An HTTP endpoint on 127.0.0.1 that keeps and prints every report it is sent."""

    def __init__(self, port: int = 0, echo: bool = True) -> None:
        self.port = port
        self.echo = echo
        self.received: list[bytes] = []
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append(body)
        if self.echo:
            _print_report(body, request.headers.get("User-Agent", ""))
        return web.json_response({"ok": True})

    async def start(self) -> None:
        """Listen on 127.0.0.1 (port 0 picks a free one)."""
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner, self.port = await serve_on_loopback(app, self.port)

    @property
    def url(self) -> str:
        """Where to POST reports."""
        return f"http://127.0.0.1:{self.port}/"

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner:
            await self._runner.cleanup()


def _print_report(body: bytes, agent: str) -> None:
    try:
        report: Any = json.loads(body)
        summary = (
            f"seq={report.get('seq_number')} session_id={report.get('session_id')} "
            f"ray={report.get('ray_version')} cpus={report.get('total_num_cpus')} "
            f"nodes={report.get('total_num_nodes')}"
        )
    except ValueError:
        summary = "(not JSON)"
    say(f"receiver: got a report from {agent}: {summary}")
    say("receiver: " + body.decode(errors="replace"))


def say(text: str) -> None:
    """Print a line; once the terminal is gone (closed window: EIO), print nothing."""
    with contextlib.suppress(OSError, ValueError):
        print(text, flush=True)


# A closed terminal sends SIGHUP: it stops the demo (and cleans up) exactly like Ctrl-C.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


async def _serve_forever(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve_cluster(temp_root: Path) -> int:
    """`usagestatsd demo-cluster`: a demo session under `temp_root` until stopped."""
    session = make_session_dir(temp_root)
    cluster = DemoCluster(session)
    await cluster.start()
    say(f"demo-cluster: serving recorded Ray 2.60 responses in {session}/sockets")
    await _serve_forever(asyncio.Event())
    await cluster.stop()
    return 0


async def serve_receiver(port: int) -> int:
    """`usagestatsd demo-receiver`: print reports POSTed to 127.0.0.1:port until stopped."""
    receiver = Receiver(port)
    await receiver.start()
    say(f"demo-receiver: listening on {receiver.url}")
    await _serve_forever(asyncio.Event())
    await receiver.stop()
    return 0


async def run_demo(interval_s: float = 5.0) -> int:
    """`usagestatsd demo` (`make run`): cluster, receiver and a real daemon process, together."""
    with tempfile.TemporaryDirectory(prefix="usagestatsd-demo-") as tmp:
        root = Path(tmp)
        temp_root, state_dir, runtime_dir = root / "ray", root / "state", root / "run"
        runtime_dir.mkdir(mode=0o755)  # what systemd's RuntimeDirectory= makes
        settings_file = root / "usagestatsd.toml"
        settings_file.write_text("# demo: everything else comes from the environment\n")
        cluster = DemoCluster(make_session_dir(temp_root))
        receiver = Receiver()
        await cluster.start()
        await receiver.start()
        say(f"demo: Ray 2.60 session (recorded) under {temp_root}")
        say(f"demo: receiver on {receiver.url}; a report every {interval_s:g}s; Ctrl-C stops")
        env = dict(os.environ)
        env.update(
            {
                "RAY_USAGE_STATS_ENABLED": "1",
                "USAGESTATSD_TEMP_ROOT": str(temp_root),
                "USAGESTATSD_STATE_DIR": str(state_dir),
                "USAGESTATSD_RUNTIME_DIR": str(runtime_dir),
                "RAY_USAGE_STATS_REPORT_URL": receiver.url,
                "RAY_USAGE_STATS_REPORT_INTERVAL_S": str(interval_s),
                # No Ray reporter in the demo, and port 18922 may belong to a real service.
                "USAGESTATSD_RAY_INTAKE": "off",
            }
        )
        if os.geteuid() != 0 and "USAGESTATSD_RAY_CONFIG_FILES" not in env:
            # A developer's own ~/.ray/config.json, not root's, which it cannot open (the demo
            # reports only to its receiver on 127.0.0.1; the service reads root's through
            # systemd).
            env["USAGESTATSD_RAY_CONFIG_FILES"] = str(Path.home() / ".ray" / "config.json")
        env.pop("NOTIFY_SOCKET", None)
        daemon = await asyncio.create_subprocess_exec(
            *python_module("usagestatsd", "run", "--config", str(settings_file)),
            "--log-format",
            "console",
            env=env,
            # Its own session: terminal signals (Ctrl-C, a closed window's SIGHUP, which the
            # daemon would take for "reload") reach only the demo, which stops it below.
            start_new_session=True,
        )
        say(f"demo: daemon pid {daemon.pid}")
        stop = asyncio.Event()
        waiter = asyncio.ensure_future(daemon.wait())
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, stop.set)
        await asyncio.wait(
            [asyncio.ensure_future(stop.wait()), waiter], return_when=asyncio.FIRST_COMPLETED
        )
        if daemon.returncode is None:
            daemon.terminate()
            await daemon.wait()
        await cluster.stop()
        await receiver.stop()
        say(f"demo: stopped; the receiver got {len(receiver.received)} report(s)")
        return 0 if daemon.returncode in (0, -signal.SIGTERM) else 1
