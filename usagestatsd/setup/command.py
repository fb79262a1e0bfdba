"""`usagestatsd setup`: find the running Ray, say what is missing and how to fix it.

The check is a pure function of what was found (setup/remedies.py), so every case is tested
without Ray or systemd. `--apply` writes only systemd drop-ins and (re)starts only usagestatsd's
own units; Ray is never restarted: the commands that would do it are printed instead.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from usagestatsd.base.files import atomic_write
from usagestatsd.config.settings import Settings, SettingsError, load_settings
from usagestatsd.facts.procfs import PROC
from usagestatsd.facts.ray_head import RayHead, scan, with_version
from usagestatsd.setup.remedies import Found, Plan, intake_url, plan, routes_to
from usagestatsd.setup.trust import head_refusal, python_problem, uid_of_user
from usagestatsd.setup.unitstate import (
    DAEMON_UNIT,
    Unit,
    daemon_uids,
    has_systemd,
    intake_holder,
    intake_listening,
    provider_problem,
    provider_unit,
    show,
)

__all__ = ["Found", "Plan", "apply", "plan", "render", "routes_to", "run_setup"]


def _write_commands(path: Path, text: str) -> list[str]:
    """Exact shell commands that write `path` with `text`."""
    lines = " ".join(shlex.quote(line) for line in text.splitlines())
    return [f"mkdir -p {path.parent}", f"printf '%s\\n' {lines} > {path}"]


def describe(head: RayHead, found: Found | None) -> list[str]:
    """The facts, one per line."""
    how = f"systemd unit {head.unit}" if head.unit else "a shell (no systemd unit)"
    reporter = "unknown (environment not readable)"
    if head.environ is not None:
        reporter = head.report_url or "Ray's endpoint (RAY_USAGE_STATS_REPORT_URL not set)"
    lines = [
        f"Ray on this machine (dashboard pid {head.pid}):",
        f"  user:          {head.user}",
        f"  Python:        {head.python}",
        f"  Ray version:   {head.version or 'unknown'}"
        + (f" ({head.version_source})" if head.version_source else ""),
        f"  temp root:     {head.temp_root}",
        f"  session:       {head.session_dir or 'none yet'}",
        f"  started by:    {how}",
        f"  its reporter:  sends to {reporter}",
    ]
    if found is not None:
        s, d, p = found.daemon_settings, found.daemon, found.provider
        intake = intake_url(s.ray_intake) or "off"
        service = f"{d.active}, runs as {d.runs_as}" if found.systemd else "no systemd here"
        lines += [
            "usagestatsd:",
            f"  service:       {service}",
            f"  temp root:     {s.temp_root}",
            f"  intake:        {intake} ({_intake_state(found)})",
            f"  provider:      {p.name} {p.enabled or 'not enabled'}, {p.active}; "
            + ("serving" if found.provider_problem is None else found.provider_problem),
        ]
    return lines


def _intake_state(found: Found) -> str:
    if found.intake_up:
        return "listening"
    if found.intake_taken_by is not None:
        return f"NOT usagestatsd's: held by uid {found.intake_taken_by}"
    return "not listening"


def render(head: RayHead, found: Found, result: Plan, applied: bool = False) -> str:
    """What `setup` prints: facts, what is missing, and the commands (one `run:` each)."""
    out = [*describe(head, found), ""]
    if result.complete:
        out.append("Everything is in place: usagestatsd reports this cluster, with the provider.")
    else:
        out.append("Missing:")
        out += [f"  {i}. {text}" for i, text in enumerate(result.missing, 1)]
    out += [f"Note: {note}" for note in result.notes]
    if (result.files or result.commands) and not applied:
        out += ["", "Fix usagestatsd's side (`sudo usagestatsd setup --apply` does exactly this):"]
        for path, text in result.files.items():
            out += [f"run: {cmd}" for cmd in _write_commands(path, text)]
        out += [f"run: {cmd}" for cmd in result.commands]
    if result.ray_commands:
        out += ["", "Ray's side (setup never restarts Ray; run this when you can restart it):"]
        out += [result.ray_restart] if result.ray_restart else []
        for path, text in result.ray_files.items():
            if applied:
                out.append(f"  (written: {path})")
            else:
                out += [f"run: {cmd}" for cmd in _write_commands(path, text)]
        out += [f"run: {cmd}" for cmd in result.ray_commands]
        out.append("The first report then follows Ray's first report (about 60 s after start).")
    return "\n".join(out)


def _daemon_side(settings: Settings) -> tuple[Unit, Settings]:
    """The daemon's unit, and the settings as the service sees them."""
    daemon = show(DAEMON_UNIT)
    try:
        # The service's own environment decides its temp root and intake, not ours.
        return daemon, load_settings(daemon.environment, {}, settings.settings_file)
    except SettingsError:
        return daemon, settings


def trusted_by_setup(settings: Settings) -> tuple[frozenset[int], bool]:
    """Root, this command's uid, the daemon's user, and `ray_user` (ours or the service's);
    and whether any of them names Ray's user already (then no other user is taken for it).
    """
    daemon, daemon_settings = _daemon_side(settings)
    named = {uid_of_user(daemon.runs_as), settings.ray_user, daemon_settings.ray_user} - {0}
    uids = {0, os.geteuid(), *named}
    return frozenset(uid for uid in uids if uid is not None), bool(named - {None})


def gather(head: RayHead, settings: Settings) -> Found:
    """Ask systemd and the sockets about usagestatsd's side, for this head."""
    daemon, daemon_settings = _daemon_side(settings)
    provider = show(provider_unit(head.user))
    session = Path(head.session_dir) if head.session_dir else None
    ours = daemon_uids(daemon.user)
    holder = intake_holder(daemon_settings.ray_intake)
    return Found(
        head=head,
        daemon=daemon,
        provider=provider,
        daemon_settings=daemon_settings,
        intake_up=intake_listening(daemon_settings.ray_intake, ours),
        intake_taken_by=holder if holder is not None and holder not in ours else None,
        provider_problem=provider_problem(session, head.uid),
        systemd=has_systemd(),
        python_problem=python_problem(head.python, head.uid),
    )


def choose(heads: list[RayHead], settings: Settings) -> RayHead:
    """The head whose temp root the daemon is set for, else the first."""
    for head in heads:
        if head.temp_root == str(settings.temp_root):
            return head
    return heads[0]


def apply(result: Plan, run: Callable[[str], int]) -> int:
    """Write the drop-ins, then run usagestatsd's commands; the first failure stops it."""
    for path, text in {**result.files, **result.ray_files}.items():
        # Shown before it is written: the user and the Python it sets are read there.
        print(f"writing {path}:")
        print("\n".join(f"  | {line}" for line in text.splitlines()))
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path.parent, path.name, text.encode(), 0o644)
        print(f"wrote {path}")
    for cmd in result.commands:
        print(f"running: {cmd}")
        if (status := run(cmd)) != 0:
            print(f"usagestatsd setup: `{cmd}` failed (exit {status})", file=sys.stderr)
            return status
    return 0


def _shell(cmd: str) -> int:
    return subprocess.run(shlex.split(cmd), check=False).returncode


def _settle(head: RayHead, settings: Settings, timeout_s: float = 20) -> Found:
    """Re-check until the provider serves and the intake listens (or time is up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = gather(head, settings)
        ready = found.provider_problem is None and found.intake_up
        if ready or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def _trusted_heads(
    heads: list[RayHead], trusted: frozenset[int], named: bool, proc: Path
) -> list[RayHead]:
    """The heads setup may act on; each other one is named, with why it is ignored."""
    kept = []
    for head in heads:
        refusal = head_refusal(head, trusted, proc, new_user_allowed=not named)
        if refusal is None:
            kept.append(head)
            continue
        print(
            f"Ignored: pid {head.pid} (uid {head.uid}) looks like a Ray dashboard, but "
            f"{refusal}. If it is your Ray, set ray_user to its user and run setup again."
        )
    return kept


def run_setup(settings: Settings, do_apply: bool, proc: Path = PROC) -> int:
    """The command: 0 when nothing is missing, 1 when something is (or no Ray runs)."""
    found_heads = scan(proc, versions=False)  # nothing an untrusted head names is opened
    heads = [
        with_version(h) for h in _trusted_heads(found_heads, *trusted_by_setup(settings), proc)
    ]
    if not heads:
        print(
            "No running Ray head found on this machine (no Ray dashboard process that "
            "setup can trust).\n"
            "Start Ray first (`ray start --head`), then run `usagestatsd setup` again.\n"
            "usagestatsd waits for a Ray session meanwhile: `usagestatsd status` shows it."
        )
        return 1
    head = choose(heads, settings)
    if len(heads) > 1:
        others = ", ".join(f"{h.temp_root} (pid {h.pid})" for h in heads if h is not head)
        print(f"Several Ray heads run here; looking at {head.temp_root}. Others: {others}")
    found = gather(head, settings)
    result = plan(found)
    print(render(head, found, result))
    if not found.systemd:
        print(
            "\nThis machine does not run systemd: set the same user and variables for "
            "however you run `usagestatsd run`."
        )
        return 0 if result.complete else 1
    if not do_apply or not (result.files or result.commands or result.ray_files):
        return 0 if result.complete else 1
    if os.geteuid() != 0:
        print("usagestatsd setup --apply: must run as root", file=sys.stderr)
        return 1
    print("\nApplying:")
    if apply(result, _shell) != 0:
        return 1
    found = _settle(head, settings)
    after = plan(found)
    print("\nAfter applying:\n" + render(head, found, after, applied=True))
    return 0 if after.complete else 1
