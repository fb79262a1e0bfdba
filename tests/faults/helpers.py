"""The fault suite's own helpers: a provider's answer, Ray's answers altered, report cycles
run in this process, a full tmpfs. (Misbehaving receivers are in tests/support/servers.py.)
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from usagestatsd.config.settings import Settings
from usagestatsd.contract.guard import KnownIdentifiers
from usagestatsd.cycle.beside_ray import BesideRay
from usagestatsd.cycle.pipeline import Disclosure
from usagestatsd.cycle.run import ReportCycle
from usagestatsd.demo import recorded_responses
from usagestatsd.facts.session import Session, find_session


def provider_doc(
    cluster_id: str | None = "0f" * 28,
    libraries: Sequence[str] = ("core", "train"),
    tags: Mapping[str, str] | None = None,
    hardware: Sequence[str] = ("NVIDIA A100",),
) -> bytes:
    """A docs/provider-protocol.md protocol_version 1 answer to GET /v1/usage."""
    return json.dumps(
        {
            "protocol_version": 1,
            "cluster_id": cluster_id,
            "library_usages": list(libraries),
            "extra_usage_tags": dict(tags or {"dashboard_used": "false"}),
            "hardware_usages": list(hardware),
        }
    ).encode()


def responses_with(
    replace: Mapping[str, Mapping[str, bytes]] | None = None, drop: Sequence[str] = ()
) -> dict[str, dict[str, bytes]]:
    """The recorded Ray 2.60 answers, some replaced, some sockets left out."""
    out = {name: dict(paths) for name, paths in recorded_responses().items()}
    for name, paths in (replace or {}).items():
        out[name] = dict(paths)
    for name in drop:
        out.pop(name, None)
    return out


def the_session(temp_root: Path) -> Session:
    """The session the daemon would find now."""
    found = find_session(temp_root).session
    assert found is not None
    return found


def report_cycle(settings: Settings, known: KnownIdentifiers | None = None) -> ReportCycle:
    """The daemon's report cycle, built as the daemon builds it (here without an intake)."""
    beside = BesideRay(settings.beside_ray, lambda: None)
    return ReportCycle.open(settings, Disclosure.of(settings, known or KnownIdentifiers()), beside)


async def run_cycles(
    settings: Settings, cycles: int = 1, known: KnownIdentifiers | None = None
) -> tuple[ReportCycle, list[MutableMapping[str, Any]]]:
    """Run whole report cycles in this process (the daemon's own code), capturing its events."""
    cycle = report_cycle(settings, known)
    with capture_logs() as events:
        for _ in range(cycles):
            await cycle.run(the_session(settings.temp_root))
    return cycle, events


def named(events: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    """The events called `name`."""
    return [e for e in events if e.get("event") == name]


@contextlib.contextmanager
def tmpfs(directory: Path, size: str = "64k") -> Iterator[Path]:
    """Mount a small tmpfs on `directory` for the with-block; skip when mounting is refused."""
    directory.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def fill(directory: Path) -> None:
    """Fill the file system holding `directory` to the last byte (files filler, filler2)."""
    for name, size in (("filler", 4096), ("filler2", 1)):
        fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * size)
        except OSError:
            pass
        finally:
            os.close(fd)
