"""Fixtures: a demo Ray session on real Unix sockets, endpoints on 127.0.0.1, settings.

Helpers that are not fixtures are in tests/support."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.support.servers import ScriptedEndpoint
from usagestatsd.config.settings import Settings, load_settings
from usagestatsd.demo import DemoCluster, make_session_dir, recorded_responses


@pytest.fixture
def temp_root() -> Iterator[Path]:
    """An empty Ray temp root, short enough for Unix socket paths (108 bytes at most)."""
    root = Path(tempfile.mkdtemp(prefix="usd-", dir="/tmp")) / "ray"
    root.mkdir()
    yield root
    shutil.rmtree(root.parent, ignore_errors=True)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """Where the daemon keeps its state."""
    return tmp_path / "state"


@pytest.fixture
def empty_settings_file(tmp_path: Path) -> Path:
    """A settings file with nothing in it (so /etc is never read by tests)."""
    path = tmp_path / "usagestatsd.toml"
    path.write_text("")
    return path


@pytest.fixture
async def demo_session(temp_root: Path) -> AsyncIterator[DemoCluster]:
    """A session directory serving the recorded Ray 2.60 responses on real Unix sockets."""
    cluster = DemoCluster(make_session_dir(temp_root), recorded_responses())
    await cluster.start()
    yield cluster
    await cluster.stop()


@pytest.fixture
async def endpoint() -> AsyncIterator[ScriptedEndpoint]:
    """An endpoint on 127.0.0.1 that accepts every report."""
    server = ScriptedEndpoint()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def make_settings(
    temp_root: Path, state_dir: Path, empty_settings_file: Path
) -> Callable[..., Settings]:
    """Settings as the daemon would build them, from an environment dict."""

    def build(env: dict[str, str] | None = None, **cli: object) -> Settings:
        base = {
            "USAGESTATSD_TEMP_ROOT": str(temp_root),
            "USAGESTATSD_STATE_DIR": str(state_dir),
            "HOME": str(temp_root.parent / "home"),
            # Never the machine's own users' ~/.ray/config.json (consent/ray_files.py).
            "USAGESTATSD_RAY_CONFIG_FILES": str(temp_root.parent / "ray-users" / "config.json"),
        }
        base.update(env or {})
        return load_settings(base, cli, empty_settings_file)

    return build
