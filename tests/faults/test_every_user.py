"""`status`, `history` and `preview` tell every local user the service's truth, or say why not.

As an operator's head runs it after `setup --apply`: Ray and the service run as Ray's user
(RAY_UID here), the service's state directory is systemd's StateDirectory= (mode 0700,
owned by that user, handed to it as $STATE_DIRECTORY), its runtime directory systemd's
RuntimeDirectory= (0755; USAGESTATSD_RUNTIME_DIR stands for the default every user shares),
and the settings file, which every command reads, names `ray_user`. The commands run as
root (real processes), as Ray's user and as another user (`nobody`), each with its own
defaults: never the service's environment.
The service and Ray are forked children of this process that drop to RAY_UID (the venv's
interpreter is not reachable by other users here), running the real `usagestatsd run` and
`usagestatsd demo-cluster`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import signal
import sys
import traceback
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.hostile import NOBODY, as_user, needs_root, open_dir
from tests.support.poll import until
from tests.support.processes import run_cli
from tests.support.servers import ScriptedEndpoint

pytestmark = needs_root

# Loaded here, before any child drops privileges: the interpreter's own library (under
# root's 0700 home) is out of reach of other uids, so nothing may be imported after.
for _module in (
    "importlib.readers",
    "usagestatsd.cli.commands",
    "usagestatsd.service.process",
    "usagestatsd.demo",
    "usagestatsd.cli.forget",
    "usagestatsd.cli.preview",
    "usagestatsd.cli.status",
):
    importlib.import_module(_module)

RAY_UID = 4242  # Ray's user, which the service runs as too (User=ray in setup's drop-in)
REPORTS = 3  # reports made before the commands look


def _run_main_as(uid: int, argv: Sequence[str], env: dict[str, str], out: Path) -> int:
    """Fork; the child drops to `uid`, runs `usagestatsd argv` with `env`, output to files."""
    pid = os.fork()
    if pid:
        return pid
    code = 70
    try:
        for fd, path in ((1, out.with_suffix(".out")), (2, out.with_suffix(".err"))):
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(handle, fd)
            os.close(handle)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 (the child's for good)
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        os.environ.clear()
        os.environ.update(env)
        from usagestatsd.cli.commands import main

        code = main(list(argv), env)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


async def start_as(uid: int, argv: Sequence[str], env: dict[str, str], out: Path) -> int:
    """A real `usagestatsd` process of `uid`, forked from a thread with no event loop."""
    return await asyncio.to_thread(_run_main_as, uid, argv, env, out)


async def end(pid: int) -> None:
    """SIGTERM, then SIGKILL if it lingers; always reaped."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if os.waitpid(pid, os.WNOHANG)[0]:
            return
        await asyncio.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


@dataclass
class Head:
    """The head node: its directories, settings file and the service's files."""

    base: Path
    settings_file: Path
    state: Path
    runtime: Path
    temp_root: Path

    def home(self, uid: int) -> Path:
        """A home of that user's own (its defaults, e.g. its state directory, are under it)."""
        home = self.base / f"home-{uid}"
        home.mkdir(exist_ok=True)
        os.chown(home, uid, uid)
        return home

    def shell(self, uid: int) -> dict[str, str]:
        """An operator's shell of `uid`: no setting of the service's environment."""
        return {
            "HOME": str(self.home(uid)),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            # Stands for the default /run/usagestatsd, the same for every user and the service.
            "USAGESTATSD_RUNTIME_DIR": str(self.runtime),
        }

    async def run(self, uid: int, *args: str) -> tuple[int, str, str]:
        """`usagestatsd <args> --config <settings file>` as `uid` (root: a real subprocess)."""
        argv = [*args, "--config", str(self.settings_file)]
        if uid == 0:
            return await run_cli(argv, self.shell(0))
        out = self.base / f"cli-{uid}-{args[0]}"
        pid = await start_as(uid, argv, self.shell(uid), out)
        _, status = await asyncio.to_thread(os.waitpid, pid, 0)
        read = out.with_suffix(".out").read_text(), out.with_suffix(".err").read_text()
        return os.waitstatus_to_exitcode(status), *read


def skip_unless_other_users_can_run_this_python() -> None:
    """Ray, the service and the commands run as other uids in forked children, which import
    the rest of the package as they go: a checkout under root's 0700 home (a fresh clone in
    /root) cannot be read by them."""
    package = Path(__file__).resolve().parents[2] / "usagestatsd"

    def check() -> str:
        return "yes" if os.access(package, os.R_OK | os.X_OK) else "no"

    for uid in (RAY_UID, NOBODY):
        if as_user(check, uid) != "yes":
            pytest.skip(
                f"uid {uid} cannot read {package} (a checkout under a 0700 home): these "
                "tests run Ray, the service and the commands as other users; run them from "
                "a checkout every user can read"
            )


@contextlib.asynccontextmanager
async def started_head(
    endpoint: ScriptedEndpoint, publish: bool, url: str | None = None
) -> AsyncIterator[Head]:
    """Ray (the demo cluster) and the service, both as RAY_UID, after REPORTS reports.

    `publish`: the runtime directory exists (systemd's RuntimeDirectory=); without it the
    settings file names the state directory, so that every command knows where it is.
    """
    skip_unless_other_users_can_run_this_python()
    base = open_dir()
    temp_root, state, runtime = base / "ray", base / "state", base / "run"
    made = ((temp_root, 0o755), (state, 0o700)) + (((runtime, 0o755),) if publish else ())
    for path, mode in made:
        path.mkdir(mode=mode)  # Ray's temp root; StateDirectory=; RuntimeDirectory=
        path.chmod(mode)
        os.chown(path, RAY_UID, RAY_UID)
    settings_file = base / "usagestatsd.toml"
    settings_file.write_text(
        f'temp_root = "{temp_root}"\nray_user = "{RAY_UID}"\n'
        + ("" if publish else f'state_dir = "{state}"\n')
    )
    settings_file.chmod(0o644)
    head = Head(base, settings_file, state, runtime, temp_root)
    ray = await start_as(
        RAY_UID, ["demo-cluster", "--temp-root", str(temp_root)], head.shell(RAY_UID), base / "ray"
    )
    await until(lambda: any(temp_root.glob("session_*/sockets/dash_ReportHead")))
    service_env = {
        **head.shell(RAY_UID),
        "STATE_DIRECTORY": str(state),  # systemd's, in the service's environment alone
        "RAY_USAGE_STATS_ENABLED": "1",
        "RAY_USAGE_STATS_REPORT_URL": url or endpoint.url,
        "RAY_USAGE_STATS_REPORT_INTERVAL_S": "0.5",
        "USAGESTATSD_RETRY_INITIAL_DELAY_S": "0.05",
        "USAGESTATSD_RAY_INTAKE": "127.0.0.1:0",
        "USAGESTATSD_RAY_CONFIG_FILES": str(base / "ray-users" / "config.json"),
    }
    argv = ["run", "--log-format", "json", "--config", str(settings_file)]
    service = await start_as(RAY_UID, argv, service_env, base / "service")
    try:
        await until(lambda: reported(state) >= REPORTS, timeout=60)
        yield head
    finally:
        await end(service)
        await end(ray)
        with contextlib.suppress(OSError):
            print((base / "service.err").read_text()[-3000:])


def reported(state: Path) -> int:
    """Reports in the service's history so far (read as root)."""
    with contextlib.suppress(OSError):
        return (state / "history.jsonl").read_bytes().count(b'"kind":"report"')
    return 0


@pytest.fixture
async def head(endpoint: ScriptedEndpoint) -> AsyncIterator[Head]:
    """The head with the service publishing its facts (the unit's RuntimeDirectory=)."""
    async with started_head(endpoint, publish=True) as started:
        yield started


USERS = {"root": 0, "ray": RAY_UID, "other": NOBODY}
NEVER = ("no record", "not running", "not listening", "No reports in the history")


async def status(head: Head, uid: int) -> tuple[dict[str, Any], str]:
    code, out, err = await head.run(uid, "status", "--json")
    assert code == 0, err
    _, text, _ = await head.run(uid, "status")
    return json.loads(out), text


@pytest.mark.parametrize("user", list(USERS))
async def test_status_shows_the_running_service_to_every_user(head: Head, user: str) -> None:
    """Root, Ray's user and another user: the service runs, its intake listens, its reports."""
    info, text = await status(head, USERS[user])
    assert info["service"]["state"] == "running", text
    assert info["beside_ray"]["intake_listening"] is True
    assert info["last_report"]["seq_number"] >= REPORTS - 1
    assert info["session"]["counters"]["seq_number"] >= REPORTS
    assert info["state_dir"] == str(head.state)
    assert not any(lie in text for lie in NEVER), text
    if user == "other":  # its facts from the published document, and said so
        assert info["facts_from"].startswith(f"from {head.runtime / 'status.json'}")
        assert "run `sudo usagestatsd status`" in info["after_restart"]["error"]
    else:
        assert info["facts_from"] is None and info["after_restart"]["changes"] == []


@pytest.mark.parametrize("user", list(USERS))
async def test_history_shows_the_service_reports_to_every_user(head: Head, user: str) -> None:
    """Root and Ray's user read the whole history; another user the last records the
    service publishes, told it cannot read the file and what to run."""
    code, out, err = await head.run(USERS[user], "history")
    assert code == 0, err
    sent = [line for line in out.splitlines() if " report " in line and " sent " in line]
    assert len(sent) >= REPORTS, out + err
    assert "No reports" not in out
    if user == "other":
        assert (
            f"cannot read {head.state / 'history.jsonl'} (its directory {head.state} is owned "
            f"by uid {RAY_UID}, mode 0700): run `sudo usagestatsd history`"
        ) in err
    else:
        assert err == ""


@pytest.mark.parametrize("user", ["root", "ray"])
async def test_preview_carries_the_service_counters(head: Head, user: str) -> None:
    """Root (trusting Ray's user from the settings file) and Ray's user preview the
    service's session with its counters, not seq 0 from a state directory of their own."""
    code, out, err = await head.run(USERS[user], "preview")
    assert code == 0, err
    body = json.loads(out)
    assert body["seq_number"] >= REPORTS and body["total_success"] >= REPORTS, out


async def test_root_preview_trusts_the_service_user_it_was_not_told_of(head: Head) -> None:
    """`sudo usagestatsd preview` with no ray_user in root's settings (setup --apply sets it
    in the service's unit only): the service's user, the owner of the document it
    publishes, is trusted as the service trusts it; the session and its counters show."""
    bare = head.base / "no-ray-user.toml"
    kept = [line for line in head.settings_file.read_text().splitlines() if "ray_user" not in line]
    bare.write_text("\n".join(kept) + "\n")
    code, out, err = await run_cli(["preview", "--config", str(bare)], head.shell(0))
    assert code == 0, err
    assert json.loads(out)["seq_number"] >= REPORTS, out


async def test_preview_by_another_user_never_starts_from_zero(head: Head) -> None:
    """Another user: the service's counters from the published document (said so), or
    nothing; never a report numbered from zero."""
    code, out, err = await head.run(NOBODY, "preview")
    assert f"counters and session_id from {head.runtime / 'status.json'}" in err
    if code == 0:
        assert json.loads(out)["seq_number"] >= REPORTS
    assert "counters shown from zero" not in err


async def test_without_the_document_another_user_is_told_what_to_run(
    endpoint: ScriptedEndpoint,
) -> None:
    """No published document (no RuntimeDirectory=): another user cannot read the service's
    files and is told so, with the command to run, never "not running" or "no reports"."""
    async with started_head(endpoint, publish=False) as head:
        info, text = await status(head, NOBODY)
        code, out, err = await head.run(NOBODY, "history")
        preview_code, _, preview_err = await head.run(NOBODY, "preview")
    assert info["service"]["state"] == "unknown", text
    assert (
        f"cannot read {head.state / 'service.json'} (its directory {head.state} is owned by "
        f"uid {RAY_UID}, mode 0700): run `sudo usagestatsd status`"
    ) in text
    assert not any(lie in text for lie in NEVER), text
    assert "Next report:    unknown" in text
    assert code == 1 and out == ""
    assert "run `sudo usagestatsd history`" in err and "Traceback" not in err
    assert preview_code == 1 and "run `sudo usagestatsd preview`" in preview_err


async def test_the_document_is_world_readable_and_holds_no_credential(
    endpoint: ScriptedEndpoint,
) -> None:
    """The service alone writes it (0644, its user's), without the userinfo of its endpoint
    URL or its environment; what it shows is what the service sent."""
    port = endpoint.url.rsplit(":", 1)[1].strip("/")
    url = f"http://reporter:s3cret-token@127.0.0.1:{port}/"
    async with started_head(endpoint, publish=True, url=url) as head:
        document = head.runtime / "status.json"
        info = os.stat(document)
        raw = document.read_text()
        code, out, _ = await head.run(NOBODY, "history", "--raw")
    assert (info.st_mode & 0o777, info.st_uid) == (0o644, RAY_UID)
    assert "s3cret" not in raw
    sent = b"".join(body for _, body, _ in endpoint.received)
    assert code == 0 and out and out.encode() in sent
    assert json.loads(raw)["record"]["endpoints"] == [f"http://127.0.0.1:{port}/"]


def test_a_file_closed_to_others_is_named_with_its_owner_and_mode() -> None:
    """StateDirectory= at systemd's default mode (0755) and the service's files 0640: the
    file itself keeps another user out, and the message says whose it is."""
    from usagestatsd.store.published import cannot_read

    state = open_dir() / "state"
    state.mkdir(mode=0o755)
    history = state / "history.jsonl"
    history.write_text("")
    history.chmod(0o640)
    for path in (state, history):
        os.chown(path, RAY_UID, RAY_UID)
    assert as_user(lambda: str(cannot_read(history, "history"))) == (
        f"cannot read {history} (owned by uid {RAY_UID}, mode 0640): run `sudo usagestatsd history`"
    )
    assert cannot_read(history, "history") is None  # root reads it
