"""What systemd and the local sockets say about usagestatsd's side of a head node.

`usagestatsd setup` compares these with the Ray it found (usagestatsd/facts/ray_head.py).
Everything here only reads: `systemctl show`, one TCP connect, one provider request.
"""

from __future__ import annotations

import asyncio
import contextlib
import pwd
import shlex
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from usagestatsd.facts.cluster import PROVIDER_SOCKET
from usagestatsd.facts.fetch import Limits, fetch_unix_json
from usagestatsd.facts.peers import tcp_listener_owner
from usagestatsd.facts.session import trusted_uids
from usagestatsd.facts.sources import SourceError, parse_provider

DAEMON_UNIT = "usagestatsd.service"
_SHOWN = ("LoadState", "ActiveState", "SubState", "UnitFileState", "User", "Environment")


@dataclass(frozen=True)
class Unit:
    """One unit as `systemctl show` reports it."""

    name: str
    loaded: bool = False
    active: str = "inactive"
    enabled: str = ""
    user: str = ""  # "" means root
    environment: dict[str, str] = field(default_factory=dict)

    @property
    def runs_as(self) -> str:
        """The user the unit's processes run as."""
        return self.user or "root"


def provider_unit(user: str) -> str:
    """The provider template's instance for Ray's user."""
    return f"usagestatsd-provider@{user}.service"


def parse_show(name: str, text: str) -> Unit:
    """`systemctl show -p ...` output (KEY=value lines) as a Unit."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = value
    env: dict[str, str] = {}
    try:
        words = shlex.split(values.get("Environment", ""))
    except ValueError:
        words = values.get("Environment", "").split()
    for word in words:
        key, sep, value = word.partition("=")
        if sep:
            env[key] = value
    return Unit(
        name=name,
        loaded=values.get("LoadState") == "loaded",
        active=values.get("ActiveState", "inactive"),
        enabled=values.get("UnitFileState", ""),
        user=values.get("User", ""),
        environment=env,
    )


def has_systemd() -> bool:
    """Is this machine booted with systemd (as sd_booted(3) checks)?"""
    return Path("/run/systemd/system").is_dir()


def show(name: str) -> Unit:
    """Ask systemd about one unit; an unknown unit (or no systemctl) gives a not-loaded Unit."""
    cmd = ["systemctl", "show", *(f"--property={p}" for p in _SHOWN), name]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return Unit(name=name)
    return parse_show(name, done.stdout) if done.returncode == 0 else Unit(name=name)


def intake_holder(address: tuple[str, int] | None) -> int | None:
    """The uid of the socket listening at the intake address, as the kernel says (None:
    nothing listens there, or the kernel does not say)."""
    if address is None:
        return None
    host = "127.0.0.1" if address[0] == "localhost" else address[0]
    try:
        holder = tcp_listener_owner((host, address[1]))
    except (OSError, ValueError):
        return None
    return None if holder is None else holder.uid


def daemon_uids(user: str) -> set[int]:
    """Who may hold the intake's port for usagestatsd: root (systemd's socket, or the
    daemon run as root) and the service's own user."""
    uids = {0}
    if user:
        with contextlib.suppress(KeyError, ValueError):
            uids.add(int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid)
    return uids


def intake_listening(
    address: tuple[str, int] | None, owners: set[int] | None = None, timeout_s: float = 1.0
) -> bool:
    """Does a socket of usagestatsd's (of a uid in `owners`, when given) accept connections
    on the intake address? Another user's listener there is not the intake."""
    if address is None:
        return False
    holder = intake_holder(address)
    if holder is not None:
        # The kernel's word is enough: a connection would be one more client for the
        # service to refuse and log, and would start a socket-activated service.
        return owners is None or holder in owners
    if owners is not None:
        return False
    try:
        with socket.create_connection(address, timeout=timeout_s):
            return True
    except OSError:
        return False


def provider_problem(session_dir: Path | None, ray_uid: int) -> str | None:
    """None if a provider serves this session now, else what is wrong, in plain words.

    The provider runs as Ray's user (`ray_uid`, found by setup), which is trusted here
    besides root and this command's own uid.
    """
    if session_dir is None:
        return "Ray has no session directory yet"
    path = session_dir / "sockets" / PROVIDER_SOCKET
    limits = Limits(timeout_s=10, trusted_uids=trusted_uids(ray_uid))
    try:
        doc = asyncio.run(fetch_unix_json(path, "/v1/usage", "provider", limits))
        parse_provider(doc)
    except SourceError as exc:
        return exc.problem
    return None
