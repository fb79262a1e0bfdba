"""Run every figure in order, print the table, write docs/performance.md.

    .venv/bin/python -m bench          # full run (about 4 min), writes docs/performance.md
    .venv/bin/python -m bench --quick  # smoke run (about 1 min), writes nothing

Figures, on this machine and with only 127.0.0.1 and Unix sockets:
1. resident memory of the daemon after 100 report cycles against a bare interpreter that
   imports exactly the modules the running daemon has loaded (its `sys.modules`);
2. time to READY=1 on a real notify socket against `python -c "import aiohttp"`;
3. CPU time per report cycle for simulated clusters of 1 to 10,000 nodes, and peak memory;
4. idle cost between reports with the watchdog on;
5. the resident memory of Ray's dashboard beside the daemon's, on the same real Ray head;
and, as root, the daemon's CPU while another user churns Ray's temp root (temp_root_churn).

`--intake-accept` measures only the intake's accept latency with 20,000 loopback
connections held (bench/intake_accept.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TypeVar

from bench import intake_accept
from bench.against_ray import measure_ray, ray_python
from bench.cycles import measure_cycles
from bench.guard import guard_figures, sigterm_figures
from bench.harness import PY, ROOT, cleanup
from bench.idle import measure_idle
from bench.memory import measure_memory
from bench.ready import measure_ready
from bench.render import MIB, render, rows_of, write_doc
from bench.results import Run
from bench.temp_root_churn import churn_lines, measure_churn

T = TypeVar("T")
FULL_PLAN = [(1, 100), (100, 100), (1000, 50), (3000, 30), (10_000, 20)]
QUICK_PLAN = [(1, 10), (100, 10), (1000, 5)]


def machine() -> list[tuple[str, str]]:
    """What the figures were measured on."""
    cpu = mem = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / MIB / MIB:.1f} GiB"
    versions = []
    for dist in ("usagestatsd", "aiohttp", "yarl", "multidict", "structlog", "tenacity",
                 "PyYAML", "python-daemon"):  # fmt: skip
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions.append(f"{dist} {metadata.version(dist)}")
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True
    ).stdout.strip()
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return [
        ("date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("load average at the end (1, 5, 15 min)", load),
        ("cpu", f"{cpu}, {os.cpu_count()} logical CPUs ({len(os.sched_getaffinity(0))} usable)"),
        ("memory", mem),
        ("kernel", f"{platform.system()} {platform.release()}"),
        ("python", f"{platform.python_implementation()} {platform.python_version()} ({PY})"),
        ("libraries", ", ".join(versions)),
        ("checkout", commit or "unknown"),
    ]  # fmt: skip


def _guarded(run: Run, name: str, measure: Callable[[], T]) -> T | None:
    """One figure; its failure is recorded in the run, and the others still run."""
    try:
        return measure()
    except Exception as exc:
        run.errors.append(f"{name}: {type(exc).__name__}: {exc}")
        return None


def _measure_all(run: Run, tmp: Path, quick: bool, skip_ray: bool) -> None:
    # Full run: the idle daemon waits for its first scheduled report while the others
    # run; its window opens once they are over (`quiet`), so nothing competes for the CPU
    # then. Quick run: it runs last, its first report forced with SIGUSR1.
    quiet = threading.Event()

    def idle() -> None:
        window = 10 if quick else 60
        run.idle = _guarded(
            run, "idle", lambda: measure_idle(tmp / "idle", window, 20, quick, quiet)
        )

    idle_thread = threading.Thread(target=idle)
    try:
        if not quick:
            idle_thread.start()
        print("bench: 1/5 memory", flush=True)
        run.memory = _guarded(
            run, "memory", lambda: measure_memory(tmp / "mem", 20 if quick else 100)
        )
        print("bench: 2/5 time to READY=1", flush=True)
        run.ready = _guarded(run, "ready", lambda: measure_ready(tmp / "ready", 3 if quick else 9))
        print("bench: 3/5 CPU per cycle", flush=True)
        plan = QUICK_PLAN if quick else FULL_PLAN
        run.cycles = _guarded(run, "cycles", lambda: measure_cycles(tmp / "cyc", plan)) or []
        print("bench: 5/5 against Ray", flush=True)
        python = ray_python()
        if skip_ray or python is None:
            run.ray_skipped = "--skip-ray" if skip_ray else "no Ray installed (set RAY_PYTHON)"
        else:
            run.ray = _guarded(
                run, "ray", lambda: measure_ray(tmp / "ray", python, 3 if quick else 10, quick)
            )
        print("bench: 4/5 idle (a quiet window of its own)", flush=True)
        quiet.set()
        if quick:
            idle_thread.start()
        idle_thread.join()
    finally:
        quiet.set()
        cleanup()


def _trust_figures(run: Run) -> list[str]:
    """The figures of hostile input beside their targets: the guard's worst case, SIGTERM
    during a cycle with a costly cluster config, the intake's accept latency."""
    lines = ["", "## Hostile input (docs/security.md)", ""]
    guard = _guarded(run, "guard", lambda: guard_figures(60)) or []
    timed = [(name, t) for name, _, t in guard if t is not None]
    if len(timed) == len(guard) and timed:
        name, worst = max(timed, key=lambda item: item[1])
        lines.append(f"- guard, worst case of {len(guard)} costly reports of up to 64 KiB: "
                     f"{worst * 1000:.2f} ms ({name}; target under 10 ms)")  # fmt: skip
    print("bench: SIGTERM during a cycle with a costly cluster config", flush=True)
    sig = _guarded(run, "sigterm", lambda: asyncio.run(sigterm_figures(ROOT, 10.0)))
    if sig:
        lines.append(f"- SIGTERM to exit during a worst-case cycle: {sig['sigterm_s']:.2f} s "
                     "(target under 1 s)")  # fmt: skip
    print("bench: intake accept latency with 20,000 loopback connections held", flush=True)
    accept = _guarded(run, "intake accept", lambda: intake_accept.measure(ROOT, 20_000, 50))
    for name, row in (accept or {}).items():
        lines.append(f"- intake accept, {name}: median {row['median_ms']:.2f} ms, "
                     f"p95 {row['p95_ms']:.2f} ms (target under 50 ms)")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    """`make bench`; exit status 1 if any figure could not be measured."""
    parser = argparse.ArgumentParser(prog="python -m bench", description="usagestatsd's figures")
    parser.add_argument("--quick", action="store_true", help="smoke mode: fewer cycles, short")
    parser.add_argument("--output", type=Path, help="default docs/performance.md (full run only)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--skip-ray", action="store_true", help="leave out figure 5")
    parser.add_argument("--json", type=Path, help="also write the measured data as JSON here")
    parser.add_argument(
        "--intake-accept", action="store_true", help="only bench/intake_accept.py's figure"
    )
    args = parser.parse_args(argv)
    if args.intake_accept:
        return intake_accept.main([])
    output = args.output or (None if args.quick else ROOT / "docs" / "performance.md")
    started = time.monotonic()
    run = Run()
    with tempfile.TemporaryDirectory(prefix="usb-") as tmpname:
        tmp = Path(tmpname)
        # Short names: a Unix socket path must stay under 108 bytes, as under Ray.
        for name in ("mem", "ready", "cyc", "idle", "ray"):
            (tmp / name).mkdir()
        _measure_all(run, tmp, args.quick, args.skip_ray)
    churn = None
    if os.geteuid() == 0:  # the churner runs as uid nobody
        window = 5.0 if args.quick else 20.0
        churn = _guarded(run, "temp-root churn", lambda: measure_churn(window))
    trust = [] if args.quick else _trust_figures(run)
    body = render(run, machine(), "quick" if args.quick else "full", time.monotonic() - started)
    body = "\n".join([body.rstrip("\n"), *churn_lines(churn), *trust]) + "\n"
    print()
    print(body)
    if args.json:
        data = {"run": asdict(run), "rows": [asdict(r) for r in rows_of(run)]}
        args.json.write_text(json.dumps(data, indent=2))
    if output and not args.no_write:
        write_doc(output, body)
        print(f"bench: wrote {output}")
    return 1 if run.errors else 0
