"""Find the running Ray head on this machine from /proc: its user, Python, temp root, version.

Ray's dashboard process is the landmark: every head runs exactly one, its command line
names `ray/dashboard/dashboard.py` with `--temp-dir=` and `--session-dir=`, and its
environment holds what `ray start` was given (RAY_USAGE_STATS_REPORT_URL among it).

The parsing is pure (bytes in, values out) so it is tested without a Ray; `scan` only
reads files under a proc root, which tests point at a directory they build.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
from dataclasses import dataclass, replace
from pathlib import Path

from usagestatsd.facts.procfs import PROC, option, pids, read_proc_file, split_nul

DASHBOARD_SCRIPT = "dashboard/dashboard.py"
# The environment variables setup looks at; nothing else of Ray's environment is kept.
KEPT_ENV = (
    "RAY_USAGE_STATS_REPORT_URL",
    "RAY_USAGE_STATS_ENABLED",
    "RAY_USAGE_STATS_REPORT_INTERVAL_S",
    "RAY_TMPDIR",
    "RAY_AUTH_MODE",
)
_VERSION_DIR = re.compile(r"^ray-([0-9][0-9A-Za-z.+-]*)\.dist-info$")


@dataclass(frozen=True)
class DashboardArgs:
    """What a dashboard command line says."""

    python: str  # the interpreter as Ray invoked it (a venv's bin/python stays itself)
    script: str  # .../site-packages/ray/dashboard/dashboard.py
    temp_root: str | None
    session_dir: str | None


@dataclass(frozen=True)
class RayHead:
    """One running Ray head, as found from its dashboard process."""

    pid: int
    uid: int
    user: str
    python: str
    temp_root: str
    session_dir: str | None
    version: str | None
    version_source: str | None
    environ: dict[str, str] | None  # None: not readable (run as root or Ray's user)
    unit: str | None  # the systemd system unit Ray runs in, if any
    script: str | None = None  # .../site-packages/ray/dashboard/dashboard.py

    @property
    def report_url(self) -> str | None:
        """Where Ray's own reporter sends (None: its default, Ray's endpoint)."""
        return None if self.environ is None else self.environ.get("RAY_USAGE_STATS_REPORT_URL")

    @property
    def usage_stats_off(self) -> bool:
        """Ray was started with usage stats disabled (--disable-usage-stats or the variable)."""
        value = (self.environ or {}).get("RAY_USAGE_STATS_ENABLED", "").strip().lower()
        return value in ("0", "false", "no", "off")


def parse_environ(raw: bytes, keep: tuple[str, ...] = KEPT_ENV) -> dict[str, str]:
    """The `keep` variables of a /proc environ (NUL-separated NAME=value)."""
    found: dict[str, str] = {}
    for item in split_nul(raw):
        name, sep, value = item.partition("=")
        if sep and name in keep:
            found[name] = value
    return found


def parse_dashboard(argv: list[str], exe: str | None) -> DashboardArgs | None:
    """The dashboard's command line, or None if `argv` is not a Ray dashboard.

    The Python is argv[0] when that is an absolute interpreter path: /proc/<pid>/exe
    resolves a virtualenv's bin/python symlink to the base interpreter, which has no Ray.
    """
    script_at = next(
        (i for i, a in enumerate(argv[:4]) if a.endswith("/ray/" + DASHBOARD_SCRIPT)), None
    )
    if script_at is None or script_at == 0:
        return None
    interpreters = [a for a in argv[:script_at] if not a.startswith("-")]
    python = interpreters[0] if interpreters and interpreters[0].startswith("/") else exe
    if not python:
        return None
    rest = argv[script_at + 1 :]
    return DashboardArgs(
        python=python,
        script=argv[script_at],
        temp_root=option(rest, "--temp-dir"),
        session_dir=option(rest, "--session-dir"),
    )


def version_from_site(site_packages: Path) -> str | None:
    """The installed Ray's version: the name of its `ray-<version>.dist-info` directory."""
    try:
        names = sorted(os.listdir(site_packages))
    except OSError:
        return None
    for name in names:
        match = _VERSION_DIR.match(name)
        if match:
            return match.group(1)
    return None


def version_from_report(session_dir: Path) -> str | None:
    """`ray_version` of the session's usage_stats.json (Ray's, or ours: the same value)."""
    raw = read_proc_file(session_dir / "usage_stats.json")
    try:
        value = json.loads(raw or b"").get("ray_version")
    except (ValueError, AttributeError):
        return None
    if isinstance(value, str) and _VERSION_DIR.match(f"ray-{value}.dist-info"):
        return value
    return None


def unit_from_cgroup(raw: str) -> str | None:
    """The system service a process runs in (`0::/system.slice/ray-head.service`)."""
    for line in raw.splitlines():
        path = line.rpartition(":")[2]
        parts = [p for p in path.split("/") if p]
        if parts and parts[0] == "system.slice":
            services = [p for p in parts[1:] if p.endswith(".service")]
            if services:
                return services[0]
    return None


def _uid_of(status: str) -> int | None:
    """The uid a process runs as, from the kernel's `Uid:` line (real, effective, ...).

    Not the owner of /proc/<pid>/*: those files read as root's for a process that made
    itself non-dumpable. A process whose real and effective uids differ is nobody's here.
    """
    for line in status.splitlines():
        if line.startswith("Uid:"):
            fields = line.split()
            if len(fields) > 2 and fields[1].isdigit() and fields[1] == fields[2]:
                return int(fields[1])
            return None
    return None


def process_uid(pid_dir: Path) -> int | None:
    """The uid of the process at /proc/<pid> (None: gone, or set-uid)."""
    status = read_proc_file(pid_dir / "status")
    return _uid_of(status.decode(errors="replace")) if status else None


def user_name(uid: int) -> str:
    """The login name of `uid` (the number itself if it has none)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def head_from_proc(pid_dir: Path) -> RayHead | None:
    """The head whose dashboard is this /proc/<pid> entry, or None."""
    raw = read_proc_file(pid_dir / "cmdline")
    if not raw or DASHBOARD_SCRIPT.encode() not in raw:
        return None
    exe = None
    with contextlib.suppress(OSError):
        exe = os.readlink(pid_dir / "exe")
    args = parse_dashboard(split_nul(raw), exe)
    uid = process_uid(pid_dir)
    if args is None or uid is None:
        return None
    env_raw = read_proc_file(pid_dir / "environ")
    environ = parse_environ(env_raw) if env_raw is not None else None
    cgroup = read_proc_file(pid_dir / "cgroup")
    session = args.session_dir
    temp_root = args.temp_root or (str(Path(session).parent) if session else "/tmp/ray")
    return RayHead(
        pid=int(pid_dir.name),
        uid=uid,
        user=user_name(uid),
        python=args.python,
        temp_root=temp_root,
        session_dir=session,
        version=None,
        version_source=None,
        environ=environ,
        unit=unit_from_cgroup(cgroup.decode(errors="replace")) if cgroup else None,
        script=args.script,
    )


def with_version(head: RayHead) -> RayHead:
    """`head` with Ray's version, from its installed package or else the session's report.

    Read from places the dashboard's command line names: only for a head already trusted.
    """
    version = version_from_site(Path(head.script).parents[2]) if head.script else None
    if version is not None:
        return replace(head, version=version, version_source="installed package")
    if head.session_dir:
        version = version_from_report(Path(head.session_dir))
    return replace(head, version=version, version_source="Ray's last report" if version else None)


def scan(proc: Path = PROC, versions: bool = True) -> list[RayHead]:
    """Every running Ray head on this machine (one dashboard each), oldest pid first;
    without `versions`, only what /proc says (nothing else is opened)."""
    heads = []
    for pid in pids(proc):
        head = head_from_proc(proc / str(pid))
        if head is not None:
            heads.append(with_version(head) if versions else head)
    return heads
