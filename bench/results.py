"""What each figure measured: plain data, rendered by bench.render."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MemoryResult:
    """Figure 1: the daemon after N cycles beside a floor importing the same modules."""

    cycles: int
    loaded: int
    own: int
    others: int
    third_party: list[str]
    floor_failed: list[str]
    daemon_kib: tuple[int, int, int]  # RSS, PSS, USS
    floor_kib: tuple[int, int, int]
    libs_rss_kib: int
    bare_rss_kib: int


@dataclass(frozen=True)
class ReadyResult:
    """Figure 2: spawn to READY=1, against `python -c "import aiohttp"` (seconds)."""

    daemon_s: list[float]
    import_s: list[float]
    python: str


@dataclass(frozen=True)
class CycleResult:
    """Figure 3, one cluster size."""

    nodes: int
    fetched_bytes: int
    paths: list[str]
    report_bytes: int
    first_ns: float
    per_cycle_ns: float
    per_cycle_ticks_ns: float
    faults_per_cycle: float
    cycles: int
    wall_s: float
    base_rss: int
    extra_peak_kib: int
    rss_after: int


@dataclass(frozen=True)
class IdleResult:
    """Figure 4: a quiet window between two reports, and a reference loop in the same window."""

    quick: bool
    watchdog_s: float
    elapsed_s: float
    cpu_ns: int
    ticks_ns: int
    voluntary: int
    involuntary: int
    threads: int
    pings: int
    other_messages: int
    rss_kib: int
    ref_cpu_ns: int
    ref_voluntary: int
    ref_pings: int
    spoiled: bool  # a scheduled report fell inside the window
    report_after_ns: int


@dataclass(frozen=True)
class RayProcess:
    """One process of the Ray head, as measured."""

    cmdline: str
    rss_kib: int
    pss_kib: int


@dataclass(frozen=True)
class RayResult:
    """Figure 5: a real Ray head and the daemon on it."""

    version: str
    quick: bool
    daemon_rss_kib: int
    daemon_pss_kib: int
    cycles: int
    cpu_ns: int
    processes: list[RayProcess]
    absorbed: int
    stood_down: int
    problem: str = ""


@dataclass
class Run:
    """Everything one `make bench` measured (None: not measured), and what failed."""

    memory: MemoryResult | None = None
    ready: ReadyResult | None = None
    cycles: list[CycleResult] = field(default_factory=list)
    idle: IdleResult | None = None
    ray: RayResult | None = None
    ray_skipped: str = ""
    errors: list[str] = field(default_factory=list)
