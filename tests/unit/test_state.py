"""State file: counters survive restarts; a broken file is set aside, never fatal."""

from __future__ import annotations

from pathlib import Path

import pytest

from usagestatsd.report import Counters, Origins
from usagestatsd.state import SessionState, State, StateError, StateStore


def test_round_trip(tmp_path: Path) -> None:
    """What is saved is what is loaded."""
    store = StateStore(tmp_path / "state")
    state = State(SessionState("session_x@1:2", "abc123", Counters(5, 4, 1)), None, 1234)
    store.save(state)
    assert store.load() == state
    assert (tmp_path / "state" / "state.json").stat().st_mode & 0o777 == 0o640


def test_origins_round_trip(tmp_path: Path) -> None:
    """Where the facts came from is kept as a typed value; text only, or the file is bad."""
    store = StateStore(tmp_path)
    origins = Origins(
        "k",
        "2.40.0",
        "dashboard HTTP 127.0.0.1:8265",
        "dashboard HTTP",
        "dashboard HTTP",
        "provider",
        "provider",
        "provider",
    )
    store.save(State(origins=origins))
    assert store.load().origins == origins
    store.path.write_text(store.path.read_text().replace('"2.40.0"', "240"))
    with pytest.raises(StateError):
        store.load()


def test_same_session_keeps_its_id(tmp_path: Path) -> None:
    """for_session returns the remembered id for the same key, a fresh random one otherwise."""
    state = State(SessionState("k", "remembered", Counters(1, 1, 0)))
    assert state.for_session("k").session_id == "remembered"
    fresh = state.for_session("other")
    assert fresh.session_id != "remembered" and fresh.counters == Counters()
    assert len(fresh.session_id) == 32


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[]",
        b'{"format": 9}',
        b'{"format": 1, "session": {"key": "k", "session_id": "i",'
        b' "counters": {"seq_number": -1, "total_success": 0, "total_failed": 0}}}',
    ],
)
def test_broken_file_raises_and_is_set_aside(tmp_path: Path, content: bytes) -> None:
    """A broken state file raises StateError naming it, and can be moved aside intact."""
    store = StateStore(tmp_path)
    store.path.write_bytes(content)
    with pytest.raises(StateError, match=str(store.path)):
        store.load()
    aside = store.set_aside()
    assert aside is not None and aside.read_bytes() == content
    assert store.load() == State()


def test_state_from_1_0_keeps_the_id_its_reports_carried(tmp_path: Path) -> None:
    """A 1.0 file (no id_source): the last report's id (the cluster id) is the session's."""
    store = StateStore(tmp_path)
    store.path.write_text(
        '{"format": 1, "session": {"key": "k", "session_id": "random1",'
        ' "counters": {"seq_number": 2, "total_success": 2, "total_failed": 0}},'
        ' "last_report": {"time_ms": 1, "session_id": "cluster1", "seq_number": 1,'
        ' "success": true, "error": null}}'
    )
    session = store.load().for_session("k")
    assert (session.session_id, session.id_source) == ("cluster1", "cluster_id")
