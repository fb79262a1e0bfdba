"""State file: counters survive restarts; a broken file is set aside, never fatal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from usagestatsd.contract.report import Counters, Origins
from usagestatsd.store.state import PendingCopy, SessionState, State, StateError, StateStore


def test_round_trip(tmp_path: Path) -> None:
    """What is saved is what is loaded."""
    store = StateStore(tmp_path / "state")
    state = State(SessionState("session_x@1:2", "abc123", Counters(5, 4, 1)), None)
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


def test_origins_without_tampering_are_saved_as_before(tmp_path: Path) -> None:
    """No tampering: no new key (earlier versions refuse an origins key they lack); with
    it, the text is kept."""
    store = StateStore(tmp_path)
    origins = Origins("k", "2.60.0", "sockets", "sockets", None, None, None, None)
    store.save(State(origins=origins))
    assert "tampering" not in store.path.read_text()
    assert store.load().origins == origins
    named = Origins("k", None, "sockets", None, None, None, None, None, "dash_JobHead is missing")
    store.save(State(origins=named))
    assert store.load().origins == named


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


# What the previous version wrote after a report (service/process.py kept local_copy_pending and, up
# to the service record, beside_ray in an untyped dict): both keys as they were on disk.
PREVIOUS = b"""{
 "beside_ray": {"arrangement": "routed", "intake": "http://127.0.0.1:18922/",
  "last_ray_report_ms": 1795823519121, "mode": "auto", "session": "session_x"},
 "format": 1,
 "last_report": {"endpoints": [{"attempts": 1, "endpoint": "https://usage.example/",
  "error": null, "ok": true, "status": 200}], "error": null, "seq_number": 0,
  "session_id": "abc", "success": true, "time_ms": 1795823519121},
 "local_copy_pending": {"session": "session_x@1:2", "sha256": "5e1f"},
 "next_report_ms": 1795827119121,
 "origins": null,
 "session": {"counters": {"seq_number": 1, "total_failed": 0, "total_success": 1},
  "id_source": "random", "key": "session_x@1:2", "local_copy_sha256": "5e1f",
  "session_id": "abc"}
}
"""


def test_a_previous_versions_file_loads_typed(tmp_path: Path) -> None:
    """Its pending copy becomes a typed field; the old beside_ray and next_report_ms keys are
    read by nobody."""
    store = StateStore(tmp_path)
    store.path.write_bytes(PREVIOUS)
    state = store.load()
    assert state.local_copy_pending == PendingCopy("session_x@1:2", "5e1f")
    assert state.pending_digest("session_x@1:2") == "5e1f"
    assert state.pending_digest("another session") is None
    assert state.session is not None and state.session.counters == Counters(1, 1, 0)
    assert state.last_report is not None and state.last_report.endpoints[0].status == 200
    StateStore(tmp_path).save(state)  # the next report's time lives in service.json now
    assert b"next_report_ms" not in store.path.read_bytes()
    assert state.session.ray_routed is False  # not known then: learnt again at the next sighting


def test_pending_copy_is_saved_under_its_old_key(tmp_path: Path) -> None:
    """On disk the key stays `local_copy_pending`, absent until a copy was about to be written."""
    store = StateStore(tmp_path)
    store.save(State())
    assert "local_copy_pending" not in json.loads(store.path.read_bytes())
    state = State(local_copy_pending=PendingCopy("k", "00ff"))
    store.save(state)
    on_disk = json.loads(store.path.read_bytes())
    assert on_disk["local_copy_pending"] == {"session": "k", "sha256": "00ff"}
    assert store.load() == state


@pytest.mark.parametrize("pending", ['"text"', '{"session": 1, "sha256": "ab"}', "null"])
def test_a_malformed_pending_copy_is_not_ours(tmp_path: Path, pending: str) -> None:
    """As before: a pending copy of unknown shape is only not recognised; the file loads."""
    store = StateStore(tmp_path)
    store.path.write_text(f'{{"format": 1, "local_copy_pending": {pending}}}')
    assert store.load().local_copy_pending is None


@pytest.mark.parametrize("value", ["true", '"yes"', "1", "null"])
def test_routed_is_remembered_only_as_true(tmp_path: Path, value: str) -> None:
    """A session seen routed stays routed after a restart; anything but `true` is not routed."""
    store = StateStore(tmp_path)
    routed = SessionState("session_x@1:2", "abc", Counters(1, 1, 0), ray_routed=True)
    store.save(State(routed))
    assert json.loads(store.path.read_bytes())["session"]["ray_routed"] is True
    assert store.load() == State(routed)
    store.path.write_text(
        store.path.read_text().replace('"ray_routed": true', f'"ray_routed": {value}')
    )
    session = store.load().session
    assert session is not None and session.ray_routed is (value == "true")
