"""The fleet's aggregates, read from the rollups only (never a scan of all reports).

One function, `fleet(store, now_ms)`, returns plain JSON-ready data; the page renders it and
`GET /api/fleet` serves it as is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from usagestatsd.collector.store import DAY_MS, Cursor, SqlStore

HISTORY_DAYS = 30
TOP = 15
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


def _query(q: Callable[..., Cursor], now_ms: int) -> dict[str, Any]:
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
            counts[row[index]] = counts.get(row[index], 0) + int(row[4])
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
        "ORDER BY last_ms DESC LIMIT 50"
    ).fetchall()
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
                "gpus": gpus,
            }
            for sid, first, last, n, version, cloud, nodes, cpus, gpus in recent
        ],
    }


def fleet(store: SqlStore, now_ms: int) -> dict[str, Any]:
    """Every aggregate the page shows, as JSON-ready data."""
    result: dict[str, Any] = store.read(lambda q: _query(q, now_ms))
    return result
