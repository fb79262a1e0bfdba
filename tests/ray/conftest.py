"""The real-Ray suite's measured timings, shown in pytest's terminal summary."""

from __future__ import annotations

import pytest

from tests.ray.harness import TIMINGS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print how long each real-Ray step took (see docs/real-ray.md)."""
    if TIMINGS:
        terminalreporter.section("real Ray timings (seconds)")
        for name, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{name:40} {seconds:7.1f}")
