"""The real-Ray suite's measured timings, shown in pytest's terminal summary."""

from __future__ import annotations

import pytest

from tests.ray.harness import RETRIED_STARTS, TIMINGS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print how long each real-Ray step took (see docs/real-ray.md), and any retried start."""
    if TIMINGS:
        terminalreporter.section("real Ray timings (seconds)")
        for name, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{name:40} {seconds:7.1f}")
    for failure in RETRIED_STARTS:
        terminalreporter.section("RAY START FAILED ONCE AND WAS RETRIED", red=True)
        terminalreporter.write_line(failure)
