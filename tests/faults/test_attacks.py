"""Attacks through the shared temp root and a hostile cluster: links, names, shell text."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from structlog.testing import capture_logs

from tests.faults.helpers import named, provider_doc, report_cycle, responses_with, the_session
from tests.support.servers import ScriptedEndpoint
from usagestatsd.base import files as fileio
from usagestatsd.config.settings import Settings
from usagestatsd.demo import DemoCluster

PRECIOUS = b"root:x:0:0:the attacker wants this overwritten\n"


def plant_link(kind: str, at: Path, victim: Path) -> None:
    """Make `at` a symlink or a hard link to `victim`."""
    if kind == "symlink":
        at.symlink_to(victim)
    else:
        os.link(victim, at)


def victim_file(directory: Path) -> Path:
    """A file the attacker wants overwritten (on the same file system, for hard links)."""
    victim = directory / "victim"
    victim.write_bytes(PRECIOUS)
    victim.chmod(0o600)
    return victim


async def one_cycle(settings: Settings) -> list[object]:
    """One whole report cycle in this process; its events."""
    cycle = report_cycle(settings)
    with capture_logs() as events:
        await cycle.run(the_session(settings.temp_root))  # a crash raises out of run
    return list(events)


@pytest.mark.parametrize("mode", ["auto", "report"])
@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
async def test_link_planted_at_usage_stats_leaves_its_target_alone(
    make_settings: Callable[..., Settings],
    endpoint: ScriptedEndpoint,
    demo_session: DemoCluster,
    temp_root: Path,
    kind: str,
    mode: str,
) -> None:
    """usage_stats.json pre-created as a link to a victim: the victim keeps its bytes and mode."""
    victim = victim_file(temp_root.parent)
    path = demo_session.session_dir / "usage_stats.json"
    plant_link(kind, path, victim)
    settings = make_settings(
        {"RAY_USAGE_STATS_REPORT_URL": endpoint.url, "USAGESTATSD_BESIDE_RAY": mode}
    )
    events = await one_cycle(settings)
    assert victim.read_bytes() == PRECIOUS
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    if mode == "report" or kind == "symlink":
        # The link itself was replaced by a new regular file holding the report.
        assert not path.is_symlink() and path.stat().st_ino != victim.stat().st_ino
        assert json.loads(path.read_bytes())["usage_stats"]["seq_number"] == 0
    else:
        # A regular file not written by us: Ray's own reporter looks active, so stand down.
        assert named(events, "beside_ray.standing_down")  # type: ignore[arg-type]


async def test_guessed_temporary_name_is_not_followed(
    make_settings: Callable[..., Settings],
    endpoint: ScriptedEndpoint,
    demo_session: DemoCluster,
    temp_root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Even if the attacker guesses the random temporary name, its symlink is never written."""
    monkeypatch.setattr(fileio, "secrets", SimpleNamespace(token_hex=lambda n: "0" * 2 * n))
    victim = victim_file(temp_root.parent)
    tmp_name = f".usage_stats.json.{os.getpid()}.{'0' * 16}.tmp"
    (demo_session.session_dir / tmp_name).symlink_to(victim)
    settings = make_settings({"RAY_USAGE_STATS_REPORT_URL": endpoint.url})
    events = await one_cycle(settings)
    assert victim.read_bytes() == PRECIOUS
    [failed] = named(events, "usage_stats.write_failed")  # type: ignore[arg-type]
    assert failed["problem"] == "File exists"
    assert len(endpoint.received) == 1  # the report itself still went out


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
async def test_link_planted_at_state_file_leaves_its_target_alone(
    make_settings: Callable[..., Settings],
    endpoint: ScriptedEndpoint,
    demo_session: DemoCluster,
    tmp_path: Path,
    kind: str,
) -> None:
    """state.json pre-created as a link: set aside unread, replaced, the victim untouched."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    victim = victim_file(tmp_path)
    plant_link(kind, state_dir / "state.json", victim)
    settings = make_settings(
        {"RAY_USAGE_STATS_REPORT_URL": endpoint.url, "USAGESTATSD_STATE_DIR": str(state_dir)}
    )
    await one_cycle(settings)
    assert victim.read_bytes() == PRECIOUS
    saved = state_dir / "state.json"
    assert not saved.is_symlink() and saved.stat().st_ino != victim.stat().st_ino
    assert json.loads(saved.read_bytes())["session"]["counters"]["seq_number"] == 1


async def test_state_dir_that_is_a_symlink_is_not_written(
    make_settings: Callable[..., Settings],
    endpoint: ScriptedEndpoint,
    demo_session: DemoCluster,
    tmp_path: Path,
) -> None:
    """A state directory replaced by a symlink to another directory: nothing lands there."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "state").symlink_to(elsewhere)
    settings = make_settings(
        {
            "RAY_USAGE_STATS_REPORT_URL": endpoint.url,
            "USAGESTATSD_STATE_DIR": str(tmp_path / "state"),
        }
    )
    events = await one_cycle(settings)
    assert named(events, "state.write_failed")  # type: ignore[arg-type]
    assert not (elsewhere / "state.json").exists()


SHELL = "$(touch {canary})"
HOSTILE_TEXT = [
    SHELL,
    "`touch {canary}`",
    "; touch {canary} #",
    "../../../../../{canary}",
    "{{{{7*7}}}}",
    "__import__('os').system('touch {canary}')",
]


async def test_nothing_from_the_cluster_is_run_or_made_a_path(
    make_settings: Callable[..., Settings],
    endpoint: ScriptedEndpoint,
    temp_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Shell, template and path text in every cluster field: nothing runs, no file appears."""
    canary = temp_root.parent / "c"  # short: socket paths have a 108-byte limit
    texts = [t.format(canary=canary) for t in HOSTILE_TEXT]
    monkeypatch.chdir(tmp_path)  # a relative `touch c` would land here
    session_dir = temp_root / "session_9$(touch c);`touch c`"
    (session_dir / "sockets").mkdir(parents=True)
    metadata = {
        "result": True,
        "data": {
            "rayVersion": texts[1],
            "pythonVersion": texts[2],
            "gitCommit": texts[3],
            "os": texts[4],
            "libcVersion": texts[5],
            "sessionStartTimestampMs": 1_700_000_000_000,
            "rayInitCluster": False,
        },
    }
    provider = provider_doc(
        cluster_id=texts[3], libraries=texts, tags={t[:60]: t for t in texts}, hardware=texts
    )
    config = tmp_path / "cluster.yaml"
    config.write_text(
        json.dumps(
            {
                "provider": {"type": texts[0]},
                "head_node_type": "h",
                "available_node_types": {
                    "h": {"node_config": {"InstanceType": texts[1]}},
                    "w": {"node_config": {"InstanceType": texts[3]}},
                },
            }
        )
    )
    cluster = DemoCluster(
        session_dir,
        responses_with(
            {
                "dash_ReportHead": {
                    **responses_with()["dash_ReportHead"],
                    "/api/v0/cluster_metadata": json.dumps(metadata).encode(),
                },
                "usagestatsd_provider": {"/v1/usage": provider},
            }
        ),
    )
    await cluster.start()
    before = set(temp_root.rglob("*"))
    try:
        settings = make_settings(
            {"RAY_USAGE_STATS_REPORT_URL": endpoint.url, "USAGESTATSD_CLUSTER_CONFIG": str(config)}
        )
        events = await one_cycle(settings)
    finally:
        await cluster.stop()
    assert not canary.exists() and not (tmp_path / "c").exists(), events
    assert len(endpoint.received) == 1, events
    assert set(temp_root.rglob("*")) - before == {session_dir / "usage_stats.json"}
    [body] = endpoint.bodies()
    assert body["session_id"] != texts[3] and len(body["session_id"]) == 32
    text = json.dumps(body)
    for hostile in texts:
        assert hostile not in text and json.dumps(hostile)[1:-1] not in text
