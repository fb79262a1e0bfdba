"""What `usagestatsd setup` finds missing, and the drop-ins and commands that fix it.

A pure function of what was found (`plan`), so every case is tested without Ray or
systemd; setup/command.py gathers the facts, prints the result and applies it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from pwd import getpwuid

from usagestatsd.base.files import read_regular_file
from usagestatsd.base.hostport import host_port
from usagestatsd.config.settings import Settings
from usagestatsd.contract.ray_support import unsupported
from usagestatsd.facts.ray_head import RayHead
from usagestatsd.setup.unitstate import DAEMON_UNIT, Unit

UNIT_DIR = Path("/etc/systemd/system")
ROUTE_DROPIN = "usagestatsd-route.conf"  # in Ray's unit; packaging removes it at removal
DROPIN_NAME = "usagestatsd-setup.conf"  # after override.conf (systemctl edit): it wins
DEFAULT_TEMP_ROOT = str(Settings.temp_root)  # Ray's default, and so the declared one


@dataclass(frozen=True)
class Found:
    """Everything setup looked at: the Ray head and usagestatsd's side."""

    head: RayHead
    daemon: Unit
    provider: Unit
    daemon_settings: Settings  # as the service sees them (its Environment= applied)
    intake_up: bool
    provider_problem: str | None  # None: a provider serves the session
    systemd: bool = True
    unit_dir: Path = UNIT_DIR  # where drop-ins go (tests use a temporary one)
    python_problem: str | None = None  # why Ray's Python must not be run as Ray's user
    intake_taken_by: int | None = None  # another user's socket listens at the intake address


@dataclass
class Plan:
    """What is missing, the drop-ins that fix it, and the commands to run."""

    missing: list[str] = field(default_factory=list)
    files: dict[Path, str] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)  # usagestatsd's side: --apply runs them
    ray_files: dict[Path, str] = field(default_factory=dict)  # inert until Ray restarts
    ray_commands: list[str] = field(default_factory=list)  # never run by setup
    notes: list[str] = field(default_factory=list)
    # How to restart a Ray started from a shell: shown beside ray_commands, not as a note.
    ray_restart: str | None = None

    @property
    def complete(self) -> bool:
        """Nothing is missing."""
        return not self.missing


def intake_url(address: tuple[str, int] | None) -> str | None:
    """The RAY_USAGE_STATS_REPORT_URL that routes Ray's reporter to the intake."""
    if address is None:
        return None
    return f"http://{host_port(*address)}/"


def routes_to(url: str | None, address: tuple[str, int] | None) -> bool:
    """Does Ray's report URL reach the intake (any loopback spelling of its host)?"""
    from urllib.parse import urlsplit

    if not url or address is None:
        return False
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return False
    loopback = {"127.0.0.1", "localhost", "::1"}
    same_host = parts.hostname == address[0] or {parts.hostname, address[0]} <= loopback
    return parts.scheme == "http" and same_host and port == address[1]


def _dropin(lines: list[str]) -> str:
    return (
        "\n".join(
            [
                "# Written by `usagestatsd setup`; run it again after changing Ray.",
                "[Service]",
                *lines,
            ]
        )
        + "\n"
    )


def _writable_paths(temp_root: str) -> list[str]:
    # The units make only /tmp writable; a temp root elsewhere must be added.
    return [] if Path(temp_root).is_relative_to("/tmp") else [f"ReadWritePaths={temp_root}"]


def _daemon_fix(found: Found, plan: Plan) -> bool:
    """The daemon's user and temp root; True if its drop-in is needed."""
    head, daemon = found.head, found.daemon
    lines: list[str] = []
    if daemon.runs_as != head.user:
        plan.missing.append(
            f"usagestatsd runs as {daemon.runs_as}, but Ray runs as {head.user}: only "
            f"{head.user} can connect to Ray's dashboard sockets."
        )
    if head.user != "root":
        # Ray's user owns its directories and serves its sockets: trust it by name too, so
        # the service's trust does not hang on running as that very user (docs/security.md).
        lines += [f"User={head.user}", f"Environment=USAGESTATSD_RAY_USER={head.user}"]
    seen_root = str(found.daemon_settings.temp_root)
    if seen_root != head.temp_root:
        plan.missing.append(
            f"usagestatsd looks for Ray under {seen_root}, but Ray's temp root is {head.temp_root}."
        )
    if head.temp_root != DEFAULT_TEMP_ROOT or seen_root != head.temp_root:
        lines += [f"Environment=USAGESTATSD_TEMP_ROOT={head.temp_root}"]
        lines += _writable_paths(head.temp_root)
    path = found.unit_dir / f"{DAEMON_UNIT}.d" / DROPIN_NAME
    if daemon.runs_as != head.user or seen_root != head.temp_root:
        plan.files[path] = _dropin(lines) if lines else _dropin(["User="])
        return True
    return False


def _provider_fix(found: Found, plan: Plan) -> bool:
    """The provider instance for Ray's user, with Ray's Python; True if it must (re)start."""
    head, unit = found.head, found.provider
    env = unit.environment
    wrong = env.get("USAGESTATSD_RAY_PYTHON") != head.python or (
        env.get("USAGESTATSD_RAY_TEMP_ROOT") != head.temp_root
    )
    if found.provider_problem is None and not wrong:
        return False
    if found.provider_problem is not None:
        plan.missing.append(
            "No provider serves this session (" + found.provider_problem + "): library "
            "usages, hardware usages, the cluster's tags and its id would be reported as "
            "null, and session_id would be usagestatsd's own."
        )
    if wrong and found.python_problem is not None:
        plan.missing.append(
            f"{unit.name} is not set up for this Ray, and setup will not set it up: Ray's "
            f"Python is not safe to run as {head.user} ({found.python_problem})."
        )
        return False
    if wrong:
        plan.missing.append(
            f"{unit.name} is not set up for this Ray (its Python should be {head.python}, "
            f"its temp root {head.temp_root})."
        )
        lines = [
            f"Environment=USAGESTATSD_RAY_PYTHON={head.python}",
            f"Environment=USAGESTATSD_RAY_TEMP_ROOT={head.temp_root}",
        ]
        if (head.environ or {}).get("RAY_AUTH_MODE") == "token":
            lines.append("Environment=RAY_AUTH_MODE=token")
        plan.files[found.unit_dir / f"{unit.name}.d" / DROPIN_NAME] = _dropin(
            lines + _writable_paths(head.temp_root)
        )
    return True


def _ray_fix(found: Found, plan: Plan) -> None:
    """Route Ray's own reporter to the intake: what the operator runs (never setup)."""
    head, address = found.head, found.daemon_settings.ray_intake
    url = intake_url(address)
    if head.usage_stats_off:
        plan.notes.append(
            "Ray was started with usage stats disabled (RAY_USAGE_STATS_ENABLED=0 or "
            "--disable-usage-stats): this cluster is never reported. That is its opt-out."
        )
        return
    why = unsupported(head.version, found.provider_problem is None)
    if why is not None:
        # Routed, Ray's reports would be absorbed by an intake whose daemon reports nothing.
        plan.missing.append(f"{why}. Ray's reporter is not routed to usagestatsd's intake.")
        return
    if url is None:
        plan.missing.append(
            'The intake is off (ray_intake = "off"): Ray\'s reporter cannot be routed to '
            "usagestatsd, which then stands down. Remove that line from "
            "/etc/usagestatsd/usagestatsd.toml."
        )
        return
    if head.environ is None:
        plan.missing.append(
            f"Cannot read the environment of Ray's dashboard (pid {head.pid}): run "
            f"`usagestatsd setup` as root or as {head.user} to see where Ray's reporter sends."
        )
        return
    if routes_to(head.report_url, address):
        return
    where = head.report_url or "Ray's endpoint (RAY_USAGE_STATS_REPORT_URL is not set)"
    plan.missing.append(
        f"Ray's own reporter sends to {where}, not to usagestatsd's intake {url}: "
        "usagestatsd stands down for such a session rather than count it twice. Ray must be "
        f"restarted with RAY_USAGE_STATS_REPORT_URL={url}."
    )
    if head.unit:
        path = found.unit_dir / f"{head.unit}.d" / ROUTE_DROPIN
        theirs = operators_route(path.parent)
        if theirs is not None:
            # systemd applies drop-ins in name order, so ours would silently win over
            # `systemctl edit`'s override.conf: an operator's own setting is theirs to change.
            plan.notes.append(
                f"{theirs} (an operator's drop-in) sets RAY_USAGE_STATS_REPORT_URL for "
                f"{head.unit}: setup leaves it alone. Set it there to {url} (or remove that "
                f"line), then: systemctl daemon-reload; systemctl restart {head.unit}"
            )
            return
        plan.ray_files[path] = _dropin([f"Environment=RAY_USAGE_STATS_REPORT_URL={url}"])
        plan.ray_commands += ["systemctl daemon-reload", f"systemctl restart {head.unit}"]
        return
    ray_cli = Path(head.python).parent / "ray"
    temp = "" if head.temp_root == DEFAULT_TEMP_ROOT else f" --temp-dir={head.temp_root}"
    start = f"RAY_USAGE_STATS_REPORT_URL={url} {ray_cli} start --head{temp}"
    as_user = f"sudo -u {head.user} env " if head.user != "root" else ""
    plan.ray_restart = (
        f"Ray was started from a shell (pid {head.pid}, user {head.user}). Stop it by your "
        "usual means (`ray stop` stops every Ray of that user on this machine), then start "
        "it again with the same options plus the report URL:"
    )
    plan.ray_commands.append(f"{as_user}{start} <your usual options>")


def operators_route(dropin_dir: Path) -> Path | None:
    """A drop-in of the operator's (not setup's) that sets Ray's report URL, if any."""
    try:
        candidates = sorted(p for p in dropin_dir.glob("*.conf") if p.name != ROUTE_DROPIN)
    except OSError:
        return None
    for candidate in candidates:
        try:
            text = read_regular_file(candidate, 64 << 10).decode("utf-8", "replace")
        except OSError:
            continue
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("Environment=") and "RAY_USAGE_STATS_REPORT_URL=" in line:
                return candidate
    return None


def user_name(uid: int) -> str:
    """A uid's user name, for the operator's screen."""
    try:
        return getpwuid(uid).pw_name
    except KeyError:
        return "no such user"


def plan(found: Found) -> Plan:
    """Compare what was found with what a routed head with a provider needs."""
    result = Plan()
    restart_daemon = _daemon_fix(found, result)
    if found.systemd and found.daemon.active != "active":
        result.missing.append(
            f"usagestatsd.service is {found.daemon.active}. If you opted out, that is "
            "expected (`usagestatsd status` says why)."
        )
        restart_daemon = True
    elif found.daemon_settings.ray_intake and found.intake_taken_by is not None:
        result.missing.append(
            f"The intake {intake_url(found.daemon_settings.ray_intake)} is held by uid "
            f"{found.intake_taken_by} ({user_name(found.intake_taken_by)}), not by usagestatsd: "
            "Ray's reports sent there reach that user. Stop that program, then "
            "`systemctl enable --now usagestatsd-intake.socket` and restart usagestatsd."
        )
    elif found.daemon_settings.ray_intake and not found.intake_up and not restart_daemon:
        result.missing.append(
            f"Nothing listens on the intake {intake_url(found.daemon_settings.ray_intake)}: "
            "another program may hold the port (journal: beside_ray.intake_unavailable); "
            "set ray_intake to a free loopback port in /etc/usagestatsd/usagestatsd.toml."
        )
    provider = _provider_fix(found, result)
    if result.files:
        result.commands.append("systemctl daemon-reload")
    if restart_daemon:
        result.commands.append(f"systemctl restart {DAEMON_UNIT}")
    if provider:
        verb = "restart" if found.provider.active == "active" else "enable --now"
        if found.provider.enabled != "enabled" and verb == "restart":
            result.commands.append(f"systemctl enable {found.provider.name}")
        result.commands.append(f"systemctl {verb} {found.provider.name}")
    _ray_fix(found, result)
    return result
