"""What /proc says about one process: memory, CPU time, context switches.

CPU time is the sum of `/proc/<pid>/task/*/schedstat` (nanoseconds on the CPU, per thread),
so a figure of a few milliseconds is meaningful; `utime+stime` from `/proc/<pid>/stat` has a
10 ms tick and is kept as a cross-check (it also counts threads that have exited).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Sample:
    """One reading of a process's counters."""

    cpu_ns: int
    ticks_ns: int
    voluntary: int
    involuntary: int
    threads: int
    minor_faults: int


def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def _kib(value: str) -> int:
    return int(value.split()[0])


def rss_kib(pid: int) -> int:
    """Resident set size now (VmRSS)."""
    return _kib(_status(pid)["VmRSS"])


def hwm_kib(pid: int) -> int:
    """Peak resident set size since start or since `reset_peak` (VmHWM)."""
    return _kib(_status(pid)["VmHWM"])


def pss_kib(pid: int) -> int:
    """Proportional set size (shared pages divided among their users)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return _kib(line.split(":", 1)[1])
    raise RuntimeError(f"no Pss for {pid}")


def uss_kib(pid: int) -> int:
    """Unique set size: private clean + private dirty pages."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += _kib(line.split(":", 1)[1])
    return total


def reset_peak(pid: int) -> None:
    """Reset VmHWM to the current RSS (clear_refs 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def sample(pid: int) -> Sample:
    """CPU time (all live threads), context switches (all live threads), thread count."""
    cpu = vol = invol = threads = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            cpu += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
            st = _status(int(task))
        except (FileNotFoundError, ProcessLookupError):
            continue
        vol += int(st["voluntary_ctxt_switches"])
        invol += int(st["nonvoluntary_ctxt_switches"])
        threads += 1
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return Sample(cpu, ticks * 1_000_000_000 // CLK_TCK, vol, invol, threads, int(fields[7]))


def cmdline(pid: int) -> str:
    """The process's command line, spaces between arguments."""
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def environ_has(pid: int, marker: bytes) -> bool:
    """True when the process's environment contains `marker` (False if unreadable)."""
    try:
        return marker in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def all_pids() -> list[int]:
    """Every process id visible now."""
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]
