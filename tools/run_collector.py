"""`make run-collector`: the whole loop on a machine with no Ray.

A demo Ray session (the recorded Ray 2.60 responses `usagestatsd demo` serves), the real
daemon reporting into a real `usagestatsd-collector` on 127.0.0.1, and the fleet page at a
printed URL. Everything lives in one temporary directory. Ctrl-C, SIGTERM and SIGHUP (the
terminal closed) stop the daemon and the collector and remove that directory.

The children run in their own sessions, so a terminal's SIGHUP or SIGINT reaches only this
process, which stops them in order; were this process killed outright, the kernel sends
them SIGTERM (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from usagestatsd.demo import DemoCluster, make_session_dir

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when this process dies, however it dies."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now (the collector binds it next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def collector_program() -> str:
    """The `usagestatsd-collector` console script next to this Python (the venv's)."""
    beside = Path(sys.executable).parent / "usagestatsd-collector"
    if beside.exists():
        return str(beside)
    found = shutil.which("usagestatsd-collector")
    if found is None:
        raise SystemExit("run-collector: usagestatsd-collector is not installed (make venv)")
    return found


def http_get(url: str) -> str | None:
    """The body of GET url, or None when it does not answer 200 (yet)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            body: bytes = reply.read()
            return body.decode(errors="replace")
    except (OSError, urllib.error.URLError):
        return None


async def spawn(name: str, *argv: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    """A child in its own session, whose output goes to this terminal."""
    print(f"run-collector: starting {name}: {' '.join(argv)}", flush=True)
    return await asyncio.create_subprocess_exec(
        *argv, env=env, start_new_session=True, preexec_fn=_die_with_parent
    )


async def stop(child: asyncio.subprocess.Process, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit within `timeout`."""
    if child.returncode is not None:
        return
    child.terminate()
    try:
        await asyncio.wait_for(child.wait(), timeout)
    except TimeoutError:
        child.kill()
        await child.wait()


async def wait_until(condition: asyncio.Future[Any], stopping: asyncio.Event) -> bool:
    """Wait for `condition` unless a stop is asked first; True if it came."""
    stopper = asyncio.ensure_future(stopping.wait())
    await asyncio.wait([condition, stopper], return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if not condition.done():
        condition.cancel()
        return False
    return True


async def poll(check: Callable[[], object], interval: float = 0.2) -> None:
    """Until check() (a blocking probe, run in a thread) returns something true."""
    while not await asyncio.to_thread(check):
        await asyncio.sleep(interval)


def session_id(session_dir: Path) -> str | None:
    """The session_id of the daemon's last report (usage_stats.json), once there is one."""
    try:
        data = json.loads((session_dir / "usage_stats.json").read_text())
        sid = data["usage_stats"]["session_id"]
        return sid if isinstance(sid, str) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def daemon_settings(path: Path, url: str, interval_s: float) -> None:
    """The daemon's settings file: report to the collector, deletions too."""
    path.write_text(
        "# run-collector: report to the collector on this machine\n"
        f"report_interval_s = {interval_s:g}\n\n"
        "[[endpoints]]\n"
        f'url = "{url}"\n'
        f'deletion_url = "{url}delete"\n'
    )


async def run(root: Path, interval_s: float, port: int, stopping: asyncio.Event) -> int:
    """The loop, until `stopping` is set or a child exits; returns the exit status."""
    temp_root, collector_state = root / "ray", root / "collector"
    url = f"http://127.0.0.1:{port}/"
    settings_file = root / "usagestatsd.toml"
    daemon_settings(settings_file, url, interval_s)
    cluster = DemoCluster(make_session_dir(temp_root))
    await cluster.start()
    print(f"run-collector: demo Ray 2.60 session (recorded) in {cluster.session_dir}", flush=True)
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "STATE_DIRECTORY")}
    children: list[asyncio.subprocess.Process] = []
    try:
        collector = await spawn(
            "the collector",
            collector_program(),
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--state-dir",
            str(collector_state),
            # Not the settings file of this machine's packaged collector, if there is one.
            "--config",
            os.devnull,
            "--log-format",
            "console",
            env=env,
        )
        children.append(collector)
        ready = asyncio.ensure_future(poll(lambda: http_get(url + "healthz") is not None))
        exited = asyncio.ensure_future(collector.wait())
        await asyncio.wait([ready, exited], return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            print(f"run-collector: the collector exited ({collector.returncode})", flush=True)
            return 1
        exited.cancel()
        daemon_env = dict(env)
        daemon_env.update(
            {
                "RAY_USAGE_STATS_ENABLED": "1",
                "USAGESTATSD_TEMP_ROOT": str(temp_root),
                "USAGESTATSD_STATE_DIR": str(root / "state"),
                # No Ray reporter here, and port 18922 may belong to a real service.
                "USAGESTATSD_RAY_INTAKE": "off",
            }
        )
        daemon = await spawn(
            "the daemon",
            sys.executable,
            "-m",
            "usagestatsd",
            "run",
            "--config",
            str(settings_file),
            "--log-format",
            "console",
            env=daemon_env,
        )
        children.append(daemon)
        print(
            f"run-collector: the fleet page: {url}  (a report every {interval_s:g} s; "
            "Ctrl-C stops everything)",
            flush=True,
        )
        shown = asyncio.ensure_future(_until_page_shows(cluster.session_dir, url))
        if await wait_until(shown, stopping):
            print(
                f"run-collector: {url} shows session {shown.result()}; "
                f"its reports: {url}sessions/{shown.result()}",
                flush=True,
            )
        # Until asked to stop, or until a child exits on its own.
        await wait_until(asyncio.ensure_future(_first_exit(children)), stopping)
        failed = [c for c in children if c.returncode not in (None, 0)]
        return 1 if failed else 0
    finally:
        for child in reversed(children):
            await stop(child)
        await cluster.stop()


async def _first_exit(children: list[asyncio.subprocess.Process]) -> None:
    """Returns when one of the children has exited."""
    waits = [asyncio.ensure_future(c.wait()) for c in children]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def _until_page_shows(session_dir: Path, url: str) -> str:
    """The session_id, once the fleet page at `url` shows it."""
    while True:
        sid = await asyncio.to_thread(session_id, session_dir)
        if sid is not None:
            page = await asyncio.to_thread(http_get, url)
            if page is not None and sid in page:
                return sid
        await asyncio.sleep(0.5)


async def main_async(interval_s: float, port: int) -> int:
    """Run in a fresh temporary directory, removed however the run ends."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stopping.set)
    # Short: Unix socket paths under it (the demo session's) must stay within 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="usd-run-collector-"))
    try:
        return await run(root, interval_s, port or free_port(), stopping)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        print(f"run-collector: stopped; removed {root}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--interval", type=float, default=5.0, metavar="SECONDS")
    parser.add_argument("--port", type=int, default=0, help="the collector's (default: a free one)")
    args = parser.parse_args()
    return asyncio.run(main_async(args.interval, args.port))


if __name__ == "__main__":
    sys.exit(main())
