"""`usagestatsd status`: what the running service decided and why, and what a restart changes.

The service writes its decisions down (store/service_record.py): `status` shows those, not what this
command would decide with its own environment, which is not the service's. From the
record's inputs and the current files it recomputes what a restart would decide and
lists the differences. A next report is shown only while one is really planned.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from usagestatsd.base.hostport import host_port
from usagestatsd.config.settings import Settings, SettingsError, load_settings
from usagestatsd.consent.decision import Decision, decide, read_consent_file
from usagestatsd.consent.ray_files import read_ray_configs
from usagestatsd.contract.fieldsets import CURRENT_VERSION, withheld
from usagestatsd.facts.cluster import PROVIDER_SOCKET
from usagestatsd.facts.session import Discovery, Session, find_session, trusted_uids, untrusted_text
from usagestatsd.store.published import describe_source, service_facts
from usagestatsd.store.service_record import FORMAT as RECORD_FORMAT
from usagestatsd.store.service_record import Held, ServiceRecord, is_running
from usagestatsd.store.state import State


def _when(ms: int | None) -> str | None:
    if ms is None:
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ms / 1000))


def _decision_json(decision: Decision) -> dict[str, Any]:
    return {
        "enabled": decision.enabled,
        "decided_by": {"layer": decision.layer, "where": decision.where, "value": decision.value},
        "reason": decision.reason,
        "how_to_change": decision.how_to_change,
        "error": decision.error,
        "consulted": [asdict(c) for c in decision.consulted],
    }


def restart_view(record: ServiceRecord) -> tuple[Settings | None, Decision | None, str | None]:
    """What a restart would decide: the service's inputs, with the files as they are now."""
    inputs = record.inputs
    config = None if inputs.settings_file is None else Path(inputs.settings_file)
    try:
        settings = load_settings(inputs.environment, inputs.command_line, config)
    except SettingsError as exc:
        return None, None, f"a restart would fail (exit 78): {exc}"
    consent_file = read_consent_file(settings.consent_file)
    return settings, decide(settings, consent_file, False, None, read_ray_configs(settings)), None


def restart_changes(record: ServiceRecord, settings: Settings, decision: Decision) -> list[str]:
    """In words: what differs between the running decision and the one a restart would take."""
    changes = []
    old = record.consent
    if (old.enabled, old.layer, old.where, old.value) != (
        decision.enabled,
        decision.layer,
        decision.where,
        decision.value,
    ):
        word = "enabled" if decision.enabled else "disabled"
        changes.append(f"collection: {word} ({decision.reason}; now: {old.reason})")
    endpoints = tuple(e.display for e in settings.endpoints)
    if decision.enabled and endpoints != record.endpoints:
        changes.append(f"endpoints: {', '.join(endpoints)} (now: {', '.join(record.endpoints)})")
    if decision.enabled and str(settings.temp_root) != record.temp_root:
        changes.append(f"Ray temp root: {settings.temp_root} (now: {record.temp_root})")
    if decision.enabled and settings.report_interval_s != record.interval_s:
        changes.append(f"interval: {settings.report_interval_s:g} s (now: {record.interval_s:g} s)")
    intake = settings.ray_intake
    asked = None if intake is None else host_port(*intake)
    was = None if record.intake is None else record.intake.address
    if decision.enabled and asked != was:
        changes.append(f"intake: {asked or 'off'} (now: {was or 'off'})")
    return changes


def _service(
    record: ServiceRecord | None, running: bool, problem: str | None, denied: bool
) -> dict[str, Any]:
    if record is None:
        state = "unknown" if problem else "no record (never started with this state directory)"
        return {"state": state, "problem": problem, "known": problem is None, "denied": denied}
    if running:
        state = "running"
    elif not record.consent.enabled:
        state = "exited at start: collection disabled"
    elif record.stopped_ms is not None:
        state = "stopped"
    else:
        state = "not running (it ended without stopping cleanly)"
    return {
        "state": state,
        "running": running,
        "pid": record.pid if running else None,
        "started": _when(record.started_ms),
        "stopped": _when(record.stopped_ms),
        "status_line": record.status_line,
        "problem": problem,
        "known": True,
    }


def _untrusted(discovery: Discovery, settings: Settings) -> str | None:
    """Ray's files belong to a user neither this command nor the service trusts."""
    if discovery.session is not None or discovery.untrusted_owner is None:
        return None
    return untrusted_text(settings.temp_root, discovery.untrusted_owner)


def describe(settings: Settings, decision: Decision) -> dict[str, Any]:
    """Everything `status` shows, as JSON-ready values (`decision`: this command's own)."""
    facts = service_facts(settings)
    record, record_problem, state = facts.record, facts.record_problem, facts.state
    running = record is not None and is_running(record)
    if record is None:
        new_settings, new_decision, error = None, None, None
    elif facts.published is not None:  # its inputs (its environment) are not published
        new_settings, new_decision = None, None
        error = "not known to this user: run `sudo usagestatsd status`"
    else:
        new_settings, new_decision, error = restart_view(record)
    # The session as the service sees it: its ray_user (often set in its unit's environment,
    # by `setup --apply`) is trusted here too, beside this command's own settings.
    service_ray_user = new_settings.ray_user if new_settings else None
    trusted = trusted_uids(settings.ray_user) | trusted_uids(service_ray_user)
    discovery = find_session(settings.temp_root, trusted)
    found = discovery.session
    after: dict[str, Any] | None = None
    in_effect = decision
    if record is not None:
        if new_settings is None or new_decision is None:
            after = {"error": error, "changes": []}
        else:
            after = {
                **_decision_json(new_decision),
                "changes": restart_changes(record, new_settings, new_decision),
            }
        # Running: what it decided. Stopped: what the service would decide at its next start.
        in_effect = record.consent if running or new_decision is None else new_decision
    why, kind = _holding(record, running, found)
    info: dict[str, Any] = {
        **_decision_json(in_effect),
        "service": _service(record, running, record_problem, facts.denied),
        "after_restart": after,
        "settings_file": str(settings.settings_file) if settings.settings_file else None,
        "consent_file": str(settings.consent_file),
        "temp_root": str(settings.temp_root),
        "state_dir": str(facts.state_dir),
        "state_problem": facts.state_problem,
        "facts_from": None if facts.published is None else describe_source(facts.published),
        "endpoints": list(record.endpoints) if record else [e.display for e in settings.endpoints],
        "session": _session(found, state),
        "session_untrusted": _untrusted(discovery, settings),
        "last_report": None,
        "standing_down": why if kind == Held.STANDING_DOWN.value else None,
        "not_reporting": why,
        "next_report": None,
        "beside_ray": _beside_ray(settings, record, running, found),
        "fields": {
            "accepted_version": in_effect.accepted_fields_version,
            "current_version": CURRENT_VERSION,
            "pending": list(withheld(in_effect.accepted_fields_version)),
            "redacted": {name: f"by {settings.source_of('redact')}" for name in settings.redact},
        },
    }
    last = state.last_report
    if last is not None:
        info["last_report"] = {
            "time": _when(last.time_ms),
            "session_id": last.session_id,
            "seq_number": last.seq_number,
            "success": last.success,
            "error": last.error,
        }
    if running and record is not None and in_effect.enabled and why is None and found:
        if record.format < RECORD_FORMAT:  # it kept its later reports' times elsewhere
            info["service"]["older_version"] = True
        else:
            info["next_report"] = _when(record.next_report_ms)
    return info


def _holding(
    record: ServiceRecord | None, running: bool, found: Session | None
) -> tuple[str | None, str | None]:
    """Why the running service reports nothing for the current session, and the kind of hold."""
    if record is None or not running or found is None or record.session != found.name:
        return None, None
    return record.not_reporting, record.held


def _session(found: Session | None, state: State) -> dict[str, Any] | None:
    if found is None:
        return None
    remembered = state.session if state.session and state.session.key == found.key else None
    return {
        "dir": str(found.path),
        "session_id": remembered.session_id if remembered and remembered.id_fixed else None,
        "session_id_source": remembered.id_source if remembered else None,
        "usage_stats_json": str(found.usage_stats_path),
        "usage_stats_json_exists": found.usage_stats_path.exists(),
        "provider": "present" if (found.sockets_dir / PROVIDER_SOCKET).exists() else "absent",
        "counters": vars(remembered.counters) if remembered else None,
        **_origins(state, found.key),
    }


def _origins(state: State, session_key: str) -> dict[str, Any]:
    """The session's Ray version and where each group of fields came from (last cycle)."""
    o = state.origins
    if o is None or o.session_key != session_key:
        return {"ray_version": None, "facts_from": None, "tampering": None}
    groups = ("metadata", "resources", "nodes", "running_jobs", "gcs")
    return {
        "ray_version": o.ray_version,
        "facts_from": {"dashboard": o.dashboard, **{g: getattr(o, g) for g in groups}},
        # Ray's sockets/ is writable by every local user: a dashboard socket gone from it.
        "tampering": o.tampering,
    }


def _beside_ray(
    settings: Settings, record: ServiceRecord | None, running: bool, found: Session | None
) -> dict[str, Any]:
    """How the service shares the session with Ray's own reporter (docs/beside-ray.md)."""
    intake = record.intake if record else None
    info: dict[str, Any] = {
        "mode": record.beside.mode if record else settings.beside_ray,
        "intake": intake.url if running and intake and intake.listening else None,
        "intake_address": intake.address if intake else None,
        "intake_listening": bool(running and intake and intake.listening),
        "intake_problem": intake.problem if running and intake else None,
        "arrangement": "unknown",
        "last_ray_report": None,
    }
    if record is None:
        asked = settings.ray_intake
        info["intake_address"] = host_port(*asked) if asked else None
    elif running and found is not None and record.beside.session == found.name:
        info["arrangement"] = record.beside.arrangement
        info["last_ray_report"] = _when(record.beside.last_ray_report_ms)
    return info


_GROUP_TITLES = {
    "metadata": "versions, commit, os, libc, start",
    "resources": "CPUs, GPUs, memory, object store",
    "nodes": "nodes",
    "running_jobs": "running jobs",
    "gcs": "libraries, hardware, tags, id",
}


def _render_origins(facts_from: dict[str, Any] | None) -> list[str]:
    if facts_from is None:
        return []
    lines = [f"  dashboard:    {facts_from['dashboard']}", "  fields from:"]
    for group, title in _GROUP_TITLES.items():
        lines.append(f"    - {title:<34} {facts_from[group] or 'nowhere (null)'}")
    return lines


def render(info: dict[str, Any]) -> str:
    """The human-readable form of `describe`."""
    word = "enabled" if info["enabled"] else "disabled"
    by = info["decided_by"]
    service = info["service"]
    lines = [
        f"Usage stats collection: {word}",
        f"  decided by:   {by['layer']} ({by['where']})"
        + (f" = {by['value']}" if by["value"] is not None else ""),
        f"  reason:       {info['reason']}",
        f"  to change:    {info['how_to_change']}",
    ]
    if info["error"]:
        lines.append(f"  ERROR:        {info['error']}")
    lines.append("  consulted:")
    for c in info["consulted"]:
        lines.append(f"    - {c['layer']:<24} {c['where']}: {c['value']}")
    lines += _service_lines(service, info["after_restart"])
    lines += [
        f"Settings file:  {info['settings_file'] or '(none; defaults)'}",
        f"Consent file:   {info['consent_file']}",
        f"Endpoints:      {', '.join(info['endpoints'])}",
        f"Ray temp root:  {info['temp_root']}",
    ]
    s = info["session"]
    if s is None and info.get("session_untrusted"):
        lines.append(f"Session:        none trusted: {info['session_untrusted']}")
    elif s is None:
        lines.append("Session:        none found")
    else:
        lines += [
            f"Session:        {s['dir']}",
            f"  session_id:   {s['session_id'] or '(assigned at the first report)'}",
            f"  local copy:   {s['usage_stats_json']}"
            + ("" if s["usage_stats_json_exists"] else " (not written yet)"),
            f"  provider:     {s['provider']}",
            f"  Ray version:  {s['ray_version'] or '(known after the first cycle)'}",
        ]
        lines += _render_origins(s["facts_from"])
        if s["tampering"]:
            lines.append(f"  TAMPERED:     {s['tampering']} (last cycle)")
    last = info["last_report"]
    if last is None:
        lines.append("Last report:    none")
    else:
        outcome = "ok" if last["success"] else f"FAILED: {last['error']}"
        lines.append(f"Last report:    {last['time']} seq {last['seq_number']} {outcome}")
    lines.append(f"Next report:    {info['next_report'] or _no_next(info)}")
    f = info["fields"]
    lines.append(
        f"Field set:      accepted version {f['accepted_version']}, current {f['current_version']}"
    )
    if f["pending"]:
        lines.append(
            f"  sent as null until accepted ('usagestatsd enable'): {', '.join(f['pending'])}"
        )
    for name, why in f["redacted"].items():
        lines.append(f"  redacted {name} ({why})")
    lines += _beside_lines(info["beside_ray"], service)
    problem = info["state_problem"]
    if problem and problem != service.get("problem"):
        lines.append(f"State:          unreadable ({problem})")
    if info["facts_from"]:
        lines.append(f"Facts:          {info['facts_from']}")
    return "\n".join(lines)


def _service_lines(service: dict[str, Any], after: dict[str, Any] | None) -> list[str]:
    lines = [f"Service:        {service['state']}"]
    if service.get("running"):
        lines[0] += f" since {service['started']} (pid {service['pid']})"
    elif service.get("stopped"):
        lines[0] += f" at {service['stopped']}"
    if service.get("status_line"):
        lines.append(f"  its status:   {service['status_line']}")
    problem = service.get("problem")
    if problem and service.get("denied"):
        lines.append(f"  {problem}")
    elif problem:
        lines.append(f"  record:       unreadable ({problem})")
    if after is None:
        return lines
    if after.get("error"):
        lines.append(f"  after restart: {after['error']}")
    elif after["changes"]:
        lines.append("  a restart ('systemctl restart usagestatsd') would change:")
        lines += [f"    - {change}" for change in after["changes"]]
    else:
        lines.append("  a restart would change nothing")
    return lines


def _no_next(info: dict[str, Any]) -> str:
    """Why no report is planned: never a time that will not come."""
    if not info["service"].get("known", True):
        return "unknown (the service's record cannot be read)"
    if not info["service"].get("running"):
        return "none (the service is not running)"
    if not info["enabled"]:
        return "none (collection is disabled)"
    if info["not_reporting"]:
        return f"none ({info['not_reporting']})"
    if info["session"] is None:
        return "none (waiting for a Ray session)"
    if info["service"].get("older_version"):
        # Its later reports' times are in state.json, where this version does not look.
        return "unknown (the running service is an older version: 'systemctl restart usagestatsd')"
    return "not scheduled"


def _beside_lines(b: dict[str, Any], service: dict[str, Any]) -> list[str]:
    running = service.get("running", False)
    explain = {
        "routed": "Ray's reporter sends to this daemon's intake; only usagestatsd reports",
        "direct": "Ray's own reporter sends this session's reports itself"
        + ("; usagestatsd stands down" if b["mode"] == "auto" else "; both report"),
        "unknown": "Ray's own reporter not seen yet",
    }[b["arrangement"]]
    lines = [f"Ray's reporter: {explain}"]
    if b["intake_listening"] and b["arrangement"] != "routed":
        lines.append(f"  to route it here, start Ray with RAY_USAGE_STATS_REPORT_URL={b['intake']}")
    elif b["intake_problem"]:
        lines.append(
            f"  intake {b['intake_address']} is NOT listening ({b['intake_problem']}): Ray's "
            "reporter cannot be routed here; free the port or choose another with ray_intake, "
            "then restart the service"
        )
    elif b["intake_address"] and not service.get("known", True):
        lines.append(f"  intake {b['intake_address']}: unknown (its record is unreadable)")
    elif b["intake_address"] and not running:
        lines.append(f"  intake {b['intake_address']}: not listening (the service is not running)")
    elif b["intake_address"] is None:
        lines.append('  intake: off (ray_intake = "off")')
    return lines
