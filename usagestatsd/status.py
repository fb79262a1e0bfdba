"""`usagestatsd status`: the decision and why, the session, and the last and next report."""

from __future__ import annotations

import time
from typing import Any

from usagestatsd.cluster import PROVIDER_SOCKET
from usagestatsd.consent import Decision
from usagestatsd.fieldsets import CURRENT_VERSION, withheld
from usagestatsd.session import find_session, trusted_uids
from usagestatsd.settings import Settings
from usagestatsd.state import State, StateStore


def _when(ms: int | None) -> str | None:
    if ms is None:
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ms / 1000))


def describe(settings: Settings, decision: Decision) -> dict[str, Any]:
    """Everything `status` shows, as JSON-ready values."""
    state, state_problem = StateStore(settings.state_dir).peek()
    found = find_session(settings.temp_root, trusted_uids(settings.ray_user))
    session: dict[str, Any] | None = None
    last = state.last_report
    if found.session:
        s = found.session
        same = state.session is not None and state.session.key == s.key
        # The id really reported (the cluster id when the provider gave it) is the last
        # report's: the remembered one is only the fallback used without a provider.
        reported_id = last.session_id if last else None
        session = {
            "dir": str(s.path),
            "session_id": (reported_id or state.session.session_id)
            if same and state.session
            else None,
            "usage_stats_json": str(s.usage_stats_path),
            "usage_stats_json_exists": s.usage_stats_path.exists(),
            "provider": "present" if (s.sockets_dir / PROVIDER_SOCKET).exists() else "absent",
            "counters": (vars(state.session.counters) if same and state.session else None),
            **_origins(state, s.key),
        }
    return {
        "enabled": decision.enabled,
        "decided_by": {"layer": decision.layer, "where": decision.where, "value": decision.value},
        "reason": decision.reason,
        "how_to_change": decision.how_to_change,
        "error": decision.error,
        "consulted": [vars(c) for c in decision.consulted],
        "settings_file": str(settings.settings_file) if settings.settings_file else None,
        "consent_file": str(settings.consent_file),
        "temp_root": str(settings.temp_root),
        "state_dir": str(settings.state_dir),
        "state_problem": state_problem,
        "endpoints": [e.display for e in settings.endpoints],
        "session": session,
        "last_report": None
        if last is None
        else {
            "time": _when(last.time_ms),
            "session_id": last.session_id,
            "seq_number": last.seq_number,
            "success": last.success,
            "error": last.error,
        },
        "next_report": _when(state.next_report_ms),
        "beside_ray": _beside_ray(settings, state, found.session.name if found.session else None),
        "fields": {
            "accepted_version": decision.accepted_fields_version,
            "current_version": CURRENT_VERSION,
            "pending": list(withheld(decision.accepted_fields_version)),
            "redacted": {name: f"by {settings.source_of('redact')}" for name in settings.redact},
        },
    }


def _origins(state: State, session_key: str) -> dict[str, Any]:
    """The session's Ray version and where each group of fields came from (last cycle)."""
    o = state.origins
    if o is None or o.session_key != session_key:
        return {"ray_version": None, "facts_from": None}
    groups = ("metadata", "resources", "nodes", "running_jobs", "gcs")
    return {
        "ray_version": o.ray_version,
        "facts_from": {"dashboard": o.dashboard, **{g: getattr(o, g) for g in groups}},
    }


def _beside_ray(settings: Settings, state: State, session_name: str | None) -> dict[str, Any]:
    """How this daemon shares the session with Ray's own reporter (docs/beside-ray.md)."""
    seen = state.extra.get("beside_ray")
    intake = settings.ray_intake
    info: dict[str, Any] = {
        "mode": settings.beside_ray,
        "intake": f"http://{intake[0]}:{intake[1]}/" if intake else None,
        "arrangement": "unknown",
        "last_ray_report": None,
    }
    if isinstance(seen, dict) and seen.get("session") == session_name:
        info["arrangement"] = seen.get("arrangement", "unknown")
        last = seen.get("last_ray_report_ms")
        info["last_ray_report"] = _when(last) if isinstance(last, int) else None
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
    lines += [
        f"Settings file:  {info['settings_file'] or '(none; defaults)'}",
        f"Consent file:   {info['consent_file']}",
        f"Endpoints:      {', '.join(info['endpoints'])}",
        f"Ray temp root:  {info['temp_root']}",
    ]
    s = info["session"]
    if s is None:
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
    last = info["last_report"]
    if last is None:
        lines.append("Last report:    none")
    else:
        outcome = "ok" if last["success"] else f"FAILED: {last['error']}"
        lines.append(f"Last report:    {last['time']} seq {last['seq_number']} {outcome}")
    lines.append(f"Next report:    {info['next_report'] or 'not scheduled'}")
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
    b = info["beside_ray"]
    explain = {
        "routed": "Ray's reporter sends to this daemon's intake; only usagestatsd reports",
        "direct": "Ray's own reporter sends this session's reports itself"
        + ("; usagestatsd stands down" if b["mode"] == "auto" else "; both report"),
        "unknown": "Ray's own reporter not seen yet",
    }[b["arrangement"]]
    lines.append(f"Ray's reporter: {explain}")
    if b["intake"] and b["arrangement"] != "routed":
        lines.append(f"  to route it here, start Ray with RAY_USAGE_STATS_REPORT_URL={b['intake']}")
    if info["state_problem"]:
        lines.append(f"State:          unreadable ({info['state_problem']})")
    return "\n".join(lines)
