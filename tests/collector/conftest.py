"""Fixtures for the collector's tests: a real collector on SQLite, a throwaway PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.collector.harness import (
    CollectorProcess,
    PostgresServer,
    running_collector,
    start_postgres,
)


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[CollectorProcess]:
    """A collector on 127.0.0.1 storing in SQLite under a temp state directory."""
    with running_collector(tmp_path / "state") as running:
        yield running


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole test session, skipped loudly when it cannot be had."""
    server = start_postgres()
    if isinstance(server, str):
        pytest.skip(f"PostgreSQL tests skipped: {server}")
    try:
        yield server
    finally:
        server.stop()
