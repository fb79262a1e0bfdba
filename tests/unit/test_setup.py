"""`usagestatsd setup`: finding Ray from /proc, and what it says and writes for each case.

Discovery reads a /proc-shaped directory built here (real files, Ray 2.60's real command
line and environment layout); the plan is checked as the operator reads it. The real
Ray and real systemd runs are tests/ray/test_setup_real.py and tests/e2e/journey.sh.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from usagestatsd.cli.commands import build_parser
from usagestatsd.config.settings import load_settings
from usagestatsd.demo import DemoCluster, make_session_dir
from usagestatsd.facts.procfs import split_nul
from usagestatsd.facts.ray_head import (
    RayHead,
    parse_dashboard,
    parse_environ,
    scan,
    unit_from_cgroup,
)
from usagestatsd.setup.command import Found, apply, plan, render, routes_to, run_setup
from usagestatsd.setup.unitstate import Unit, parse_show, provider_problem

VENV = "/opt/ray/venv"
SITE = f"{VENV}/lib/python3.11/site-packages"
INTAKE = "http://127.0.0.1:18922/"


def dashboard_cmdline(temp_root: str, session: str) -> bytes:
    """Ray 2.60's dashboard command line, as /proc/<pid>/cmdline holds it."""
    argv = [
        f"{VENV}/bin/python",
        f"{SITE}/ray/dashboard/dashboard.py",
        "--host=127.0.0.1",
        "--port=8265",
        "--port-retries=0",
        f"--temp-dir={temp_root}",
        f"--log-dir={session}/logs",
        f"--session-dir={session}",
        "--logging-rotate-bytes=536870912",
        "--gcs-address=10.0.0.5:6379",
    ]
    return b"\0".join(a.encode() for a in argv) + b"\0"


def test_split_nul_and_environ_keep_only_rays_variables() -> None:
    raw = b"HOME=/home/ray\0RAY_USAGE_STATS_REPORT_URL=http://127.0.0.1:18922/\0SECRET=x\0"
    assert split_nul(raw) == [
        "HOME=/home/ray",
        "RAY_USAGE_STATS_REPORT_URL=http://127.0.0.1:18922/",
        "SECRET=x",
    ]
    assert parse_environ(raw) == {"RAY_USAGE_STATS_REPORT_URL": INTAKE}
    assert split_nul(b"") == []


def test_dashboard_python_is_the_venvs_not_the_resolved_exe() -> None:
    args = parse_dashboard(
        split_nul(dashboard_cmdline("/tmp/ray", "/tmp/ray/s")), "/usr/bin/python3.11"
    )
    assert args is not None
    assert args.python == f"{VENV}/bin/python"  # /proc/<pid>/exe would lose the venv
    assert (args.temp_root, args.session_dir) == ("/tmp/ray", "/tmp/ray/s")
    # `python -u script ...` keeps the interpreter; a relative argv[0] falls back to exe.
    flagged = parse_dashboard(["python", "-u", f"{SITE}/ray/dashboard/dashboard.py"], "/usr/bin/py")
    assert flagged is not None and flagged.python == "/usr/bin/py"
    assert parse_dashboard(["/usr/bin/python3", "-m", "http.server"], "/usr/bin/python3") is None
    assert parse_dashboard([f"{SITE}/ray/dashboard/dashboard.py"], None) is None


def test_unit_from_cgroup() -> None:
    assert unit_from_cgroup("0::/system.slice/ray-head.service\n") == "ray-head.service"
    assert unit_from_cgroup("0::/user.slice/user-1000.slice/session-3.scope\n") is None
    assert unit_from_cgroup("0::/\n") is None


def fake_proc(tmp: Path, pid: int, uid: int, env: bytes, cgroup: str) -> Path:
    """A /proc with one Ray dashboard, and the site-packages its command line names."""
    proc = tmp / "proc"
    site = tmp / SITE.lstrip("/")
    (site / "ray-2.60.0.dist-info").mkdir(parents=True)
    entry = proc / str(pid)
    entry.mkdir(parents=True)
    cmd = dashboard_cmdline("/tmp/ray", "/tmp/ray/session_x").replace(
        SITE.encode(), str(site).encode()
    )
    (entry / "cmdline").write_bytes(cmd)
    (entry / "environ").write_bytes(env)
    (entry / "status").write_text(f"Name:\tpython\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
    (entry / "cgroup").write_text(cgroup)
    os.symlink("/usr/bin/python3.11", entry / "exe")
    other = proc / "7"
    other.mkdir()
    (other / "cmdline").write_bytes(b"/usr/sbin/sshd\0-D\0")
    (proc / "self").mkdir()
    return proc


def test_scan_finds_the_head_its_user_version_unit_and_reporter(tmp_path: Path) -> None:
    env = b"PATH=/usr/bin\0RAY_USAGE_STATS_REPORT_URL=http://127.0.0.1:18922/\0"
    proc = fake_proc(tmp_path, 4242, 0, env, "0::/system.slice/ray-head.service\n")
    [head] = scan(proc)
    assert head.pid == 4242 and head.uid == 0 and head.user == "root"
    assert (head.version, head.version_source) == ("2.60.0", "installed package")
    assert (head.temp_root, head.session_dir) == ("/tmp/ray", "/tmp/ray/session_x")
    assert head.unit == "ray-head.service"
    assert head.report_url == INTAKE and not head.usage_stats_off
    assert scan(tmp_path / "no-proc") == []


def test_unreadable_environ_is_unknown_not_unrouted(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, 10, 0, b"", "")
    (proc / "10" / "environ").unlink()  # as /proc/<pid>/environ of another user reads
    [head] = scan(proc)
    assert head.environ is None and head.unit is None
    text = render(head, found(head), plan(found(head)))
    assert "Cannot read the environment of Ray's dashboard (pid 10)" in text


def test_parse_show() -> None:
    unit = parse_show(
        "usagestatsd-provider@ray.service",
        "LoadState=loaded\nActiveState=active\nUnitFileState=enabled\nUser=ray\n"
        'Environment=USAGESTATSD_RAY_PYTHON=/opt/ray/venv/bin/python "A=b c"\n',
    )
    assert unit.loaded and unit.active == "active" and unit.enabled == "enabled"
    assert unit.runs_as == "ray"
    assert unit.environment == {"USAGESTATSD_RAY_PYTHON": f"{VENV}/bin/python", "A": "b c"}
    assert parse_show("x", "").runs_as == "root"


def head_as(user: str = "root", **changes: object) -> RayHead:
    head = RayHead(
        pid=99,
        uid=0 if user == "root" else 1000,
        user=user,
        python=f"{VENV}/bin/python",
        temp_root="/tmp/ray",
        session_dir="/tmp/ray/session_x",
        version="2.60.0",
        version_source="installed package",
        environ={"RAY_USAGE_STATS_REPORT_URL": INTAKE},
        unit="ray-head.service",
    )
    return replace(head, **changes)  # type: ignore[arg-type]


def found(head: RayHead, unit_dir: Path = Path("/etc/systemd/system"), **changes: object) -> Found:
    """A head node where everything is in place, then `changes`."""
    provider = Unit(
        name=f"usagestatsd-provider@{head.user}.service",
        loaded=True,
        active="active",
        enabled="enabled",
        user=head.user,
        environment={
            "USAGESTATSD_RAY_PYTHON": head.python,
            "USAGESTATSD_RAY_TEMP_ROOT": head.temp_root,
        },
    )
    base = Found(
        head=head,
        daemon=Unit("usagestatsd.service", True, "active", "enabled", ""),
        provider=provider,
        daemon_settings=load_settings({}, {}, Path("/dev/null")),
        intake_up=True,
        provider_problem=None,
        unit_dir=unit_dir,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_everything_in_place() -> None:
    head = head_as()
    result = plan(found(head))
    assert result.complete and not result.files and not result.commands
    text = render(head, found(head), result)
    assert "Everything is in place" in text
    assert "sends to http://127.0.0.1:18922/" in text and "run:" not in text


def test_default_head_as_user_ray_unrouted_without_provider(tmp_path: Path) -> None:
    head = head_as("ray", environ={})
    missing_provider = Unit("usagestatsd-provider@ray.service", True, "inactive", "disabled")
    f = found(head, tmp_path, provider=missing_provider, provider_problem="socket is absent")
    result = plan(f)
    text = render(head, f, result)
    assert "usagestatsd runs as root, but Ray runs as ray" in text
    assert "No provider serves this session (socket is absent)" in text
    assert "Ray's own reporter sends to Ray's endpoint" in text
    assert result.commands == [
        "systemctl daemon-reload",
        "systemctl restart usagestatsd.service",
        "systemctl enable --now usagestatsd-provider@ray.service",
    ]
    assert result.ray_commands == ["systemctl daemon-reload", "systemctl restart ray-head.service"]
    daemon_dropin = tmp_path / "usagestatsd.service.d" / "usagestatsd-setup.conf"
    assert "User=ray" in result.files[daemon_dropin]
    provider_dropin = tmp_path / "usagestatsd-provider@ray.service.d" / "usagestatsd-setup.conf"
    assert f"Environment=USAGESTATSD_RAY_PYTHON={VENV}/bin/python" in result.files[provider_dropin]
    ray_dropin = tmp_path / "ray-head.service.d" / "usagestatsd-route.conf"
    assert f"Environment=RAY_USAGE_STATS_REPORT_URL={INTAKE}" in result.ray_files[ray_dropin]
    # Every fix is an exact command line; Ray's restart is left to the operator.
    runs = [line[5:] for line in text.splitlines() if line.startswith("run: ")]
    assert f"mkdir -p {daemon_dropin.parent}" in runs
    assert runs[-1] == "systemctl restart ray-head.service"

    ran: list[str] = []

    def systemctl(cmd: str) -> int:  # stands in for the shell: there is no systemd here
        ran.append(cmd)
        return 0

    assert apply(result, systemctl) == 0
    assert ran == result.commands  # Ray's restart is never among them
    assert "User=ray" in daemon_dropin.read_text()
    assert oct(ray_dropin.stat().st_mode & 0o777) == "0o644"


def test_an_operators_override_of_the_report_url_is_left_to_them(tmp_path: Path) -> None:
    """`systemctl edit ray-head` set the report URL (override.conf): setup writes no route of
    its own, which would silently win (drop-ins apply in name order), and says what to do."""
    head = head_as("ray", environ={})
    override = tmp_path / "ray-head.service.d" / "override.conf"
    override.parent.mkdir()
    override.write_text("[Service]\nEnvironment=RAY_USAGE_STATS_REPORT_URL=https://elsewhere/\n")
    f = found(head, tmp_path)
    result = plan(f)
    assert result.ray_files == {} and result.ray_commands == []
    text = render(head, f, result)
    assert f"{override} (an operator's drop-in) sets RAY_USAGE_STATS_REPORT_URL" in text
    assert f"Set it there to {INTAKE}" in text


def test_shell_started_ray_gets_a_start_command_not_a_unit(tmp_path: Path) -> None:
    head = head_as("ray", environ={}, unit=None, temp_root="/data/raytmp")
    result = plan(found(head, tmp_path))
    text = render(head, found(head, tmp_path), result)
    assert "Ray was started from a shell (pid 99, user ray)" in text
    assert (
        f"run: sudo -u ray env RAY_USAGE_STATS_REPORT_URL={INTAKE} {VENV}/bin/ray start --head "
        "--temp-dir=/data/raytmp <your usual options>" in text
    )
    dropin = result.files[tmp_path / "usagestatsd.service.d" / "usagestatsd-setup.conf"]
    assert "Environment=USAGESTATSD_TEMP_ROOT=/data/raytmp" in dropin
    assert "ReadWritePaths=/data/raytmp" in dropin  # the unit makes only /tmp writable


def test_cluster_started_with_usage_stats_off_is_an_opt_out_not_a_fault() -> None:
    head = head_as(environ={"RAY_USAGE_STATS_ENABLED": "0"})
    result = plan(found(head))
    assert result.complete and not result.ray_commands
    assert "this cluster is never reported" in render(head, found(head), result)


def test_intake_port_taken_is_named() -> None:
    head = head_as()
    text = render(head, found(head, intake_up=False), plan(found(head, intake_up=False)))
    assert "Nothing listens on the intake http://127.0.0.1:18922/" in text


def test_routes_to_accepts_loopback_spellings_only() -> None:
    address = ("127.0.0.1", 18922)
    assert routes_to("http://localhost:18922/", address)
    assert routes_to("http://127.0.0.1:18922", address)
    assert not routes_to("https://usage-stats.ray.io/", address)
    assert not routes_to("http://127.0.0.1:18923/", address)
    assert not routes_to(None, address) and not routes_to(INTAKE, None)


@pytest.fixture
def serving_provider(temp_root: Path) -> Iterator[Path]:
    """A session whose provider socket answers /v1/usage (served from a thread)."""
    session = make_session_dir(temp_root)
    body = json.dumps(
        {
            "protocol_version": 1,
            "cluster_id": "ab" * 28,
            "library_usages": ["core"],
            "extra_usage_tags": {},
            "hardware_usages": [],
            "collected_at_ms": 1,
        }
    ).encode()
    loop = asyncio.new_event_loop()
    cluster = DemoCluster(session, {"usagestatsd_provider": {"/v1/usage": body}})
    loop.run_until_complete(cluster.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield session
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.run_until_complete(cluster.stop())
    loop.close()


def test_provider_problem_reads_the_real_socket(serving_provider: Path, tmp_path: Path) -> None:
    assert provider_problem(serving_provider, os.geteuid()) is None
    problem = provider_problem(tmp_path, os.geteuid())
    assert problem is not None and "is absent" in problem
    assert provider_problem(None, os.geteuid()) == "Ray has no session directory yet"


def test_no_ray_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "proc").mkdir()
    settings = load_settings({}, {}, Path("/dev/null"))
    assert run_setup(settings, False, tmp_path / "proc") == 1
    assert "No running Ray head found" in capsys.readouterr().out


def test_cli_has_setup_with_apply() -> None:
    args = build_parser().parse_args(["setup", "--apply", "--temp-root", "/x"])
    assert args.command == "setup" and args.apply and args.temp_root == "/x"


def test_without_systemd_the_unit_state_is_not_a_fault() -> None:
    head = head_as()
    f = found(head, systemd=False, daemon=Unit("usagestatsd.service"))
    text = render(head, f, plan(f))
    assert "service:       no systemd here" in text
    assert "usagestatsd.service is inactive" not in text
