"""Figure 1: resident memory of the daemon after N cycles, against an import-only floor."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from importlib import metadata
from pathlib import Path

from bench import procstat
from bench.harness import PY, Fixture, daemon_env, spawn, start_daemon, stop
from bench.results import MemoryResult
from tests.support.poll import wait_until

# Run inside the daemon process: on SIGUSR2, write sys.modules.
MODULES_HOOK = r"""
import os, signal, sys
def _dump(*_):
    with open(os.environ["BENCH_MODULES_OUT"] + ".tmp", "w") as f:
        f.write("\n".join(sys.modules))
    os.rename(os.environ["BENCH_MODULES_OUT"] + ".tmp", os.environ["BENCH_MODULES_OUT"])
signal.signal(signal.SIGUSR2, _dump)
from usagestatsd.cli.commands import entry_point
entry_point()
"""

# The floor: a bare interpreter importing a list of modules, then doing nothing.
FLOOR = r"""
import sys
names = open(sys.argv[1]).read().split()
failed = []
for name in names:
    try:
        __import__(name)
    except Exception:
        failed.append(name)
print("ready", len(names) - len(failed), " ".join(failed), flush=True)
sys.stdin.read()
"""


def floor_process(tmp: Path, names: list[str], tag: str) -> tuple[subprocess.Popen[str], str]:
    """An interpreter that has imported `names`, and its report line."""
    listing = tmp / f"modules-{tag}.txt"
    listing.write_text("\n".join(names))
    proc = spawn(
        [PY, "-c", FLOOR, str(listing)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=tmp
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("ready"):
        raise RuntimeError(f"floor interpreter failed: {line!r}")
    return proc, line


def _distribution_modules() -> set[str]:
    names: set[str] = set()
    for dist in metadata.distributions():
        top = dist.read_text("top_level.txt")
        if top:
            names.update(top.split())
        for f in dist.files or []:
            parts = f.parts
            if parts and parts[0].isidentifier():
                names.add(parts[0].removesuffix(".py"))
    return names


def _rss_pss_uss(pid: int) -> tuple[int, int, int]:
    return procstat.rss_kib(pid), procstat.pss_kib(pid), procstat.uss_kib(pid)


def measure_memory(tmp: Path, cycles: int) -> MemoryResult:
    """RSS/PSS/USS of the daemon after `cycles` report cycles and of its floor, same moment."""
    fixture = Fixture(tmp / "ray", nodes=1)
    fixture.wait_session()
    env = daemon_env(tmp, tmp / "ray", fixture.endpoint, 0.05)
    modules_out = tmp / "daemon-modules.txt"
    env["BENCH_MODULES_OUT"] = str(modules_out)
    daemon = start_daemon(tmp, env, prefix=[PY, "-c", MODULES_HOOK])
    fixture.wait_reports(cycles, 30 + cycles)
    os.kill(daemon.pid, signal.SIGUSR2)
    wait_until(modules_out.exists, 10, "the daemon's module list", interval=0.01)
    loaded = modules_out.read_text().split()
    ours = [m for m in loaded if m == "usagestatsd" or m.startswith("usagestatsd.")]
    names = [m for m in loaded if m not in ours and m != "__main__"]
    floor, floor_line = floor_process(tmp, names, "floor")
    libs, _ = floor_process(tmp, ["aiohttp", "structlog", "tenacity"], "libs")
    bare, _ = floor_process(tmp, [], "bare")
    time.sleep(0.3)
    # Sampled at the same moment so that shared pages are shared alike.
    done = fixture.reports
    daemon_kib, floor_kib = _rss_pss_uss(daemon.pid), _rss_pss_uss(floor.pid)
    libs_rss, bare_rss = procstat.rss_kib(libs.pid), procstat.rss_kib(bare.pid)
    for proc in (floor, libs, bare, daemon):
        stop(proc)
    fixture.close()
    return MemoryResult(
        cycles=done,
        loaded=len(loaded),
        own=len(ours),
        others=len(names),
        third_party=sorted({m.split(".")[0] for m in names} & _distribution_modules()),
        floor_failed=floor_line.split()[2:],
        daemon_kib=daemon_kib,
        floor_kib=floor_kib,
        libs_rss_kib=libs_rss,
        bare_rss_kib=bare_rss,
    )
