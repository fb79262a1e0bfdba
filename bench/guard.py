"""The privacy guard's worst case, and SIGTERM during a cycle with a costly cluster config.

    .venv/bin/python -m bench.guard                                   # this worktree's code
    .venv/bin/python -m bench.guard --code /tmp/base                  # another checkout's

1. The guard alone, in this process: the CPU time (best of 5) of `privacy.guard` on the
   costliest reports of at most 64 KiB (as JSON) built here: long dotted strings (what made
   the old host-name pattern backtrack), runs of hex digits and colons, names in capitals,
   long lists, many tags, with this machine's own names known. Each case is stopped after
   `--case-timeout` seconds (the old code needs minutes for some).
2. The real daemon (`python -m usagestatsd run`, interval 0.5 s, from `--code`) on a demo
   session, with a 255 KiB cluster config of ~1,000-character dotted instance types: the
   reports it sends and its own CPU time (start-up included) in its first 10 s
   (`--sigterm-after`), and the seconds from a SIGTERM sent then, while a cycle runs, to its
   exit (SIGKILL after 120 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from bench.harness import seconds_to_exit

MAX_REPORT = 64 << 10


def _costly_strings(kind: str, length: int, index: int) -> str:
    unit = {
        "dotted": "a.",
        "digits and dots": "1.",
        "digits and colons": "1:",
        "hex and colons": "a:",
        "hex": "ab",
        "capitalised words": "Aa ",
        "mixed": "a1:b.2-c@=",
    }[kind]
    return (unit * (length // len(unit) + 1))[: length - 4] + f"{index:04d}"


def _cases() -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, report fields): each report at most 64 KiB as JSON."""
    kinds: tuple[str, ...] = ("dotted", "digits and dots", "digits and colons")
    kinds += ("hex and colons", "hex", "capitalised words", "mixed")
    for kind in kinds:
        yield (
            f"60 library names of 1,020 characters, {kind}",
            {"library_usages": tuple(_costly_strings(kind, 1020, i) for i in range(60))},
        )
        # The longest items a shape still takes: 64 characters, as many as fit.
        yield (
            f"3 lists of 300 items of 64 characters, {kind}",
            {
                name: tuple(_costly_strings(kind, 64, i) for i in range(300))
                for name in ("library_usages", "hardware_usages", "worker_node_instance_types")
            },
        )
        yield (
            f"230 operator tags of 250 characters, {kind}",
            {"extra_usage_tags": {f"k{i}": _costly_strings(kind, 250, i) for i in range(230)}},
        )
    yield (
        "one instance type of 64,000 characters, dotted",
        {"head_node_instance_type": _costly_strings("dotted", 64_000, 0)},
    )
    yield (
        "Ray's 115 tags, free-text ones at 64-item lists",
        {"extra_usage_tags": _rays_tags_filled()},
    )


def _rays_tags_filled() -> dict[str, str]:
    from usagestatsd.contract.ray_tags import RAY_TAG_KEYS

    names = ",".join(f"LlamaForCausalLM{i}" for i in range(24))
    return {key: names if "llm" in key else "True" for key in sorted(RAY_TAG_KEYS)}


def _report_size(report: Any) -> int:
    from dataclasses import asdict

    return len(json.dumps(asdict(report)))


class _TooSlow(Exception):
    pass


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise _TooSlow


def guard_figures(case_timeout: int) -> list[tuple[str, int, float | None]]:
    """(case, report bytes, best CPU seconds of 5 or None when over the timeout)."""
    from tests.unit.test_report import recorded_report
    from usagestatsd.contract import guard as guard_module
    from usagestatsd.contract.guard import guard

    # A sender whose values are all new: nothing remembered from the run before.
    forget = getattr(guard_module, "forget_verdicts", lambda: None)
    from usagestatsd.cycle.pipeline import collect_known_identifiers

    known = collect_known_identifiers()
    out = []
    signal.signal(signal.SIGALRM, _alarm)
    for name, fields in _cases():
        report = recorded_report().with_fields(**fields)
        size = _report_size(report)
        assert size <= MAX_REPORT, (name, size)
        best: float | None = None
        for _ in range(5):
            forget()
            signal.alarm(case_timeout)
            started = time.process_time()
            try:
                guard(report, known)
            except _TooSlow:
                best = None
                break
            finally:
                signal.alarm(0)
            spent = time.process_time() - started
            best = spent if best is None else min(best, spent)
            if spent > 1:  # slow enough to measure once
                break
        out.append((name, size, best))
        print(f"guard: {name}: {size} bytes, {_ms(best, case_timeout)}", flush=True)
    return out


def _ms(seconds: float | None, timeout: int) -> str:
    return f"> {timeout} s (stopped)" if seconds is None else f"{seconds * 1000:.2f} ms"


async def sigterm_figures(code: Path, after: float) -> dict[str, float]:
    """The real daemon against the costly cluster config; its figures."""
    from tests.faults.test_guard_attacks import write_costly_config
    from tests.faults.test_trust import cpu_seconds
    from tests.support.processes import daemon_env, start_daemon
    from tests.support.servers import ScriptedEndpoint
    from usagestatsd.demo import DemoCluster, make_session_dir, recorded_responses

    base = Path(tempfile.mkdtemp(prefix="usd-bench-", dir="/tmp"))
    cluster = DemoCluster(make_session_dir(base / "ray"), recorded_responses())
    await cluster.start()
    endpoint = ScriptedEndpoint()
    await endpoint.start()
    config = base / "ray_bootstrap_config.yaml"
    write_costly_config(config)
    env = daemon_env(
        base / "ray", base / "state", endpoint.url, USAGESTATSD_CLUSTER_CONFIG=str(config)
    )
    env["PYTHONPATH"] = str(code)
    os.chdir(code)
    daemon = start_daemon(env)
    out: dict[str, float] = {}
    try:
        await asyncio.sleep(after)
        cpu = cpu_seconds(daemon.proc.pid)
        out["sigterm_s"] = await seconds_to_exit(daemon.proc)
        out["reports_before"] = len(endpoint.received)
        out["cpu_before_s"] = cpu
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
        daemon.proc.wait()
        await cluster.stop()
        await endpoint.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.guard")
    parser.add_argument("--code", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--case-timeout", type=int, default=60)
    parser.add_argument("--only", choices=["guard", "sigterm"])
    parser.add_argument("--sigterm-after", type=float, default=10.0)
    args = parser.parse_args(argv)
    code = args.code.resolve()
    sys.path.insert(0, str(code))
    if args.only in (None, "guard"):
        figures = guard_figures(args.case_timeout)
        worst = max((f[2] for f in figures), key=lambda s: float("inf") if s is None else s)
        print(f"guard: worst case {_ms(worst, args.case_timeout)}", flush=True)
    if args.only in (None, "sigterm"):
        daemon = asyncio.run(sigterm_figures(code, args.sigterm_after))
        print("sigterm", " ".join(f"{k}={v:.2f}" for k, v in daemon.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
