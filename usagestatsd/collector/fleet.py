"""The fleet's aggregates, read from the rollups only (never a scan of all reports).

One function, `fleet(store, now_ms)`, returns plain JSON-ready data; the page renders it and
`GET /api/fleet` serves it as is.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from usagestatsd.collector.store import DAY_MS, Cursor, SqlStore

HISTORY_DAYS = 30
TOP = 15
RECENT = 50  # the clusters listed on the page
# Buckets for cluster sizes: (label, low, high) inclusive.
_SIZE_BUCKETS = (
    ("0", 0, 0),
    ("1", 1, 1),
    ("2-4", 2, 4),
    ("5-16", 5, 16),
    ("17-64", 17, 64),
    ("65-256", 65, 256),
    ("257+", 257, 1 << 62),
)


def gpus_shown(cpus: Any, gpus: Any) -> Any:
    """A cluster's GPU count as the page shows it.

    Ray reports the cluster's resource totals as read from its status: `GPU` is absent
    from them on a cluster without GPUs, and its reporter sends `total_num_gpus: null`.
    So a null GPU count beside a known CPU count is 0 GPUs. Only when the CPU count is
    null as well did the report carry no resources at all (the status could not be read):
    then the GPU count is unknown.
    """
    if gpus is None and cpus is not None:
        return 0
    return gpus


def _tag_value(body: str, key: str) -> str | None:
    """The value of one extra usage tag in a stored report, if it carries it."""
    try:
        tags = json.loads(body).get("extra_usage_tags")
    except (ValueError, AttributeError, RecursionError):
        return None
    value = tags.get(key) if isinstance(tags, dict) else None
    return value if isinstance(value, str) else None


def _bucket(rows: Iterable[tuple[Any, Any]]) -> list[dict[str, Any]]:
    counts = {label: 0 for label, _, _ in _SIZE_BUCKETS}
    unknown = 0
    for value, count in rows:
        if value is None:
            unknown += int(count)
            continue
        for label, low, high in _SIZE_BUCKETS:
            if low <= int(value) <= high:
                counts[label] += int(count)
                break
    out = [{"label": label, "clusters": n} for label, n in counts.items()]
    out.append({"label": "unknown", "clusters": unknown})
    return out


def _top(rows: Iterable[tuple[Any, Any]], total: int) -> list[dict[str, Any]]:
    out = []
    for value, count in rows:
        share = round(int(count) / total, 4) if total else 0.0
        out.append(
            {
                "name": value if value is not None else "unknown",
                "clusters": int(count),
                "share": share,
            }
        )
    return out


def _groups(q: Callable[..., Cursor], key: str) -> dict[str, str | None]:
    """The value of tag `key` in the newest report of each recently seen cluster.

    Read from the stored reports, not a rollup: bounded to the clusters the page lists
    (one report each, by primary key).
    """
    rows = q(
        "SELECT r.session_id, r.body FROM reports r JOIN "
        f"(SELECT session_id, seq_number FROM sessions ORDER BY last_ms DESC LIMIT {RECENT}) s "
        "ON r.session_id = s.session_id AND r.seq_number = s.seq_number"
    ).fetchall()
    return {str(sid): _tag_value(str(body), key) for sid, body in rows}


def _query(q: Callable[..., Cursor], now_ms: int, group_tag: str) -> dict[str, Any]:
    total = int(q("SELECT COUNT(*) FROM sessions").fetchone()[0])
    reports = int(q("SELECT value FROM totals WHERE name = 'reports'").fetchone()[0])
    seen = {
        label: int(
            q("SELECT COUNT(*) FROM sessions WHERE last_ms >= ?", (now_ms - ms,)).fetchone()[0]
        )
        for label, ms in (("24h", DAY_MS), ("7d", 7 * DAY_MS))
    }
    first_day = now_ms // DAY_MS - HISTORY_DAYS + 1
    by_day: dict[int, dict[str, int]] = {}
    for day, version, count in q(
        "SELECT day, ray_version, COUNT(*) FROM session_days WHERE day >= ? "
        "GROUP BY day, ray_version",
        (first_day,),
    ).fetchall():
        by_day.setdefault(int(day), {})[str(version)] = int(count)

    # One pass over the sessions for every per-cluster breakdown (sizes and clouds).
    shapes = q(
        "SELECT total_num_nodes, total_num_cpus, total_num_gpus, cloud_provider, COUNT(*) "
        "FROM sessions GROUP BY total_num_nodes, total_num_cpus, total_num_gpus, cloud_provider"
    ).fetchall()

    def grouped(index: int) -> list[tuple[Any, Any]]:
        counts: dict[Any, int] = {}
        for row in shapes:
            value = gpus_shown(row[1], row[2]) if index == 2 else row[index]
            counts[value] = counts.get(value, 0) + int(row[4])
        return list(counts.items())

    def facet(name: str) -> list[tuple[Any, Any]]:
        rows: list[tuple[Any, Any]] = q(
            "SELECT value, COUNT(*) AS n FROM session_facets WHERE facet = ? "
            "GROUP BY value ORDER BY n DESC, value LIMIT ?",
            (name, TOP),
        ).fetchall()
        return rows

    clouds = sorted(grouped(3), key=lambda r: (-int(r[1]), str(r[0])))[:TOP]
    recent = q(
        "SELECT session_id, first_ms, last_ms, reports, ray_version, cloud_provider, "
        "total_num_nodes, total_num_cpus, total_num_gpus FROM sessions "
        f"ORDER BY last_ms DESC LIMIT {RECENT}"
    ).fetchall()
    groups = _groups(q, group_tag) if group_tag else {}
    return {
        "generated_ms": now_ms,
        "clusters": {"stored": total, "seen_24h": seen["24h"], "seen_7d": seen["7d"]},
        "reports_stored": reports,
        "ray_versions_by_day": [
            {"day_ms": day * DAY_MS, "versions": by_day.get(day, {})}
            for day in range(first_day, first_day + HISTORY_DAYS)
        ],
        "libraries": _top(facet("library"), total),
        "hardware": _top(facet("hardware"), total),
        "sizes": {
            "nodes": _bucket(grouped(0)),
            "cpus": _bucket(grouped(1)),
            "gpus": _bucket(grouped(2)),
        },
        "clouds": _top(clouds, total),
        "instance_types": _top(facet("instance_type"), total),
        "group_by_tag": group_tag or None,
        "recent_sessions": [
            {
                "session_id": sid,
                "first_ms": int(first),
                "last_ms": int(last),
                "reports": int(n),
                "ray_version": version,
                "cloud_provider": cloud,
                "nodes": nodes,
                "cpus": cpus,
                "gpus": gpus_shown(cpus, gpus),
                "group": groups.get(sid),
            }
            for sid, first, last, n, version, cloud, nodes, cpus, gpus in recent
        ],
    }


def fleet(store: SqlStore, now_ms: int, group_tag: str = "") -> dict[str, Any]:
    """Every aggregate the page shows, as JSON-ready data; with `group_tag`, each listed
    cluster's value of that operator tag (None when its newest report lacks it)."""
    result: dict[str, Any] = store.read(lambda q: _query(q, now_ms, group_tag))
    return result
