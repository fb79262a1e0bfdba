"""Session discovery in an untrusted temp root, and safe writing of usage_stats.json."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from usagestatsd.base.files import UnsafeFileError, atomic_write
from usagestatsd.demo import make_session_dir
from usagestatsd.facts.session import find_session, still_there, write_usage_stats


def test_no_session_yet(temp_root: Path) -> None:
    """An empty temp root (or none at all) is simply 'no session'."""
    assert find_session(temp_root).session is None
    assert find_session(temp_root / "missing").session is None


def test_session_latest_is_followed(temp_root: Path) -> None:
    """session_latest names the current session."""
    session = make_session_dir(temp_root)
    found = find_session(temp_root).session
    assert found is not None and found.path == session


def test_new_session_replaces_old(temp_root: Path) -> None:
    """A cluster restart (a new session dir and link) is found as a different session."""
    first = find_session(temp_root) if make_session_dir(temp_root, 1_000_000) else None
    second_dir = make_session_dir(temp_root, 2_000_000)
    second = find_session(temp_root).session
    assert first is not None and first.session is not None and second is not None
    assert second.path == second_dir and second.key != first.session.key


@pytest.mark.parametrize("target", ["/etc", "../", "nowhere", "session_latest"])
def test_untrustworthy_latest_link_falls_back(temp_root: Path, target: str) -> None:
    """A link pointing outside, dangling or looping is refused; the newest session is used."""
    session = make_session_dir(temp_root)
    link = temp_root / "session_latest"
    link.unlink()
    link.symlink_to(target)
    found = find_session(temp_root)
    assert found.session is not None and found.session.path == session
    assert found.refused is not None


def test_latest_pointing_outside_with_no_other_session(temp_root: Path) -> None:
    """With only a link to /etc there is no session at all."""
    (temp_root / "session_latest").symlink_to("/etc")
    assert find_session(temp_root).session is None


def test_session_symlink_dirs_are_not_sessions(temp_root: Path, tmp_path: Path) -> None:
    """A session_* entry that is a symlink to a directory elsewhere is ignored."""
    (tmp_path / "fake").mkdir()
    (temp_root / "session_2099-01-01_00-00-00_000000_1").symlink_to(tmp_path / "fake")
    assert find_session(temp_root).session is None


def test_deleted_session_is_noticed(temp_root: Path) -> None:
    """A session directory removed (or replaced) after discovery is no longer 'still there'."""
    session_dir = make_session_dir(temp_root)
    found = find_session(temp_root).session
    assert found is not None and still_there(found)
    shutil.rmtree(session_dir)
    assert not still_there(found)
    session_dir.write_text("now a file")
    assert not still_there(found)


def test_usage_stats_written_atomically_and_readable(temp_root: Path) -> None:
    """usage_stats.json is complete JSON, mode 0644, with no temp files left behind."""
    make_session_dir(temp_root)
    found = find_session(temp_root).session
    assert found is not None
    os.umask(0o077)
    try:
        write_usage_stats(found, b'{"usage_stats": {}, "success": true, "error": null}')
    finally:
        os.umask(0o022)
    path = found.usage_stats_path
    assert json.loads(path.read_bytes())["success"] is True
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in found.path.iterdir() if p.name.startswith(".")] == []


def test_planted_symlink_target_is_untouched(temp_root: Path, tmp_path: Path) -> None:
    """A usage_stats.json symlink to a victim file is replaced, the victim never written."""
    make_session_dir(temp_root)
    found = find_session(temp_root).session
    assert found is not None
    victim = tmp_path / "victim"
    victim.write_text("precious")
    found.usage_stats_path.symlink_to(victim)
    write_usage_stats(found, b"{}")
    assert victim.read_text() == "precious"
    assert not found.usage_stats_path.is_symlink()


def test_planted_hard_link_target_is_untouched(temp_root: Path) -> None:
    """A usage_stats.json hard-linked to another file: that file keeps its content."""
    make_session_dir(temp_root)
    found = find_session(temp_root).session
    assert found is not None
    victim = found.path / "victim"
    victim.write_text("precious")
    os.link(victim, found.usage_stats_path)
    write_usage_stats(found, b"{}")
    assert victim.read_text() == "precious"


def test_directory_symlink_is_refused(tmp_path: Path) -> None:
    """Writing into a directory path that is a symlink is refused, nothing written."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(UnsafeFileError):
        atomic_write(tmp_path / "link", "f.json", b"{}")
    assert list((tmp_path / "real").iterdir()) == []


def test_unwritable_directory_leaves_old_file(tmp_path: Path) -> None:
    """If the write fails, the old file is intact and no temp file remains."""
    atomic_write(tmp_path, "f.json", b"old")
    with pytest.raises(TypeError):
        atomic_write(tmp_path, "f.json", "not bytes")  # type: ignore[arg-type]
    assert (tmp_path / "f.json").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def fake_process(proc: Path, pid: int, args: list[str], uid: int = 0) -> None:
    """A /proc/<pid> with this command line, owned by `uid` (as the kernel shows it)."""
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in args) + b"\0")
    os.chown(proc / str(pid), uid, uid)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a fake /proc entry another owner needs root")
def test_live_session_wins_over_a_dead_latest(temp_root: Path, tmp_path: Path) -> None:
    """session_latest at a session no Ray process runs: the live one is followed, and only a
    process of a trusted uid makes a session live."""
    live = make_session_dir(temp_root, 1_000_000)
    dead = make_session_dir(temp_root, 2_000_000)  # session_latest points here
    proc = tmp_path / "proc"
    fake_process(proc, 4242, ["gcs_server", f"--session-name={dead.name}"], uid=65534)
    assert find_session(temp_root, {0}, proc).session.path == dead  # type: ignore[union-attr]
    fake_process(proc, 4343, ["raylet", f"--session-name={live.name}", "--x=1"], uid=0)
    found = find_session(temp_root, {0}, proc)
    assert found.session is not None and found.session.path == live
    assert found.refused is not None and dead.name in found.refused
    fake_process(proc, 4444, ["gcs_server", f"--session-name={dead.name}"], uid=0)
    assert find_session(temp_root, {0}, proc).session.path == dead  # type: ignore[union-attr]


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory another owner needs root")
def test_untrusted_owners_are_refused(temp_root: Path) -> None:
    """A temp root or a session directory owned by an untrusted uid is not used."""
    session = make_session_dir(temp_root)
    os.chown(session, 65534, 65534)
    assert find_session(temp_root, {0}).session is None
    os.chown(session, 0, 0)
    os.chown(temp_root, 65534, 65534)
    found = find_session(temp_root, {0})
    assert found.session is None and found.refused
    assert "owned by nobody (uid 65534)" in found.refused
