"""History, forget, redaction and versioned consent: every byte shown, deletion honoured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.hostile import NOBODY, as_user, needs_root, open_dir
from tests.support.poll import until
from tests.support.processes import (
    consent_file_env,
    daemon_env,
    report_then_stop,
    run_cli,
    running_daemon,
)
from tests.support.servers import Reply, ScriptedEndpoint
from usagestatsd.config.settings import DEFAULT_ENDPOINT_URL, Settings, redact_url
from usagestatsd.contract.fieldsets import CURRENT_VERSION, redactable, withheld
from usagestatsd.contract.guard import KnownIdentifiers
from usagestatsd.contract.report import REPORT_FIELDS
from usagestatsd.cycle.pipeline import Disclosure, prepare_report
from usagestatsd.demo import DemoCluster
from usagestatsd.facts.session import find_session
from usagestatsd.store.history import History, Record
from usagestatsd.store.state import State


def record(time_ms: int, session: str = "s1", body: str = "{}") -> Record:
    """A report record."""
    return Record("report", time_ms, session, "http://127.0.0.1/", "sent", 200, None, "x", body)


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    """Run the real command line with `env`."""
    return subprocess.run(
        [sys.executable, "-m", "usagestatsd", *args, "--config", "/dev/null"],
        env=env,
        capture_output=True,
        timeout=60,
    )


def test_history_is_bounded_by_size(tmp_path: Path) -> None:
    """Appends ten times the cap's worth (~40 compactions) never grow the file past its cap;
    the newest are kept."""
    history = History(tmp_path, max_bytes=20_000, max_age_days=365)
    for i in range(800):
        history.append([record(1_000_000 + i, body="x" * 100)], 1_000_000 + i)
        assert history.path.stat().st_size <= 20_000 + 300
    times = [r.time_ms for r in history.load().records]
    assert times[-1] == 1_000_000 + 799 and times == sorted(times)


def test_history_is_bounded_by_age(tmp_path: Path) -> None:
    """Records older than the age cap are dropped at the next append."""
    history = History(tmp_path, max_bytes=1 << 20, max_age_days=1)
    day = 86_400_000
    history.append([record(0), record(1)], 1)
    history.append([record(2 * day)], 2 * day)
    assert [r.time_ms for r in history.load().records] == [2 * day]


def test_torn_final_record_is_dropped_not_fatal(tmp_path: Path) -> None:
    """A crash mid-append leaves a torn line: it is skipped, and the next append is intact."""
    history = History(tmp_path)
    history.append([record(1)], 1)
    with open(history.path, "ab") as handle:
        handle.write(b'{"kind": "report", "time_ms": 2, "sess')
    loaded = history.load()
    assert [r.time_ms for r in loaded.records] == [1] and loaded.skipped == 1
    history.append([record(3)], 3)
    loaded = history.load()
    assert [r.time_ms for r in loaded.records] == [1, 3] and loaded.skipped == 1


async def test_raw_history_equals_received_bytes(
    demo_session: DemoCluster, endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """`history --raw --last 1` prints byte for byte what the endpoint received."""
    env = daemon_env(temp_root, state_dir, endpoint.url)
    await report_then_stop(env, endpoint, 2)
    raw = cli("history", "--raw", "--last", "1", env={**env, "PATH": "/usr/bin:/bin"})
    assert raw.returncode == 0
    assert raw.stdout == endpoint.received[-1][1]
    listed = cli("history", "--json", env={**env, "PATH": "/usr/bin:/bin"})
    lines = [json.loads(x) for x in listed.stdout.splitlines()]
    assert len(lines) == len(endpoint.received) and lines[-1]["outcome"] == "sent"


async def test_preview_equals_next_report(
    demo_session: DemoCluster, endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """preview shows the next report exactly, except the time and the counters."""
    env = daemon_env(temp_root, state_dir, endpoint.url)
    await report_then_stop(env, endpoint, 1)
    # Asynchronously: the demo cluster answers from this test's event loop.
    code, out, err = await run_cli(["preview", "--config", "/dev/null"], env)
    assert code == 0, err
    shown = json.loads(out)
    seen = len(endpoint.received)
    with running_daemon(env):
        await until(lambda: len(endpoint.received) > seen)
    sent = endpoint.bodies()[seen]
    for body in (shown, sent):
        for key in ("collect_timestamp_ms", "seq_number", "total_success", "total_failed"):
            body.pop(key)
    assert shown == sent


@pytest.mark.parametrize(
    ("script", "code", "purged", "outcome"),
    [
        ([200], 0, True, "deleted"),
        ([404], 1, False, "unknown_session"),
        ([503, 200], 0, True, "deleted"),
        ([500], 1, False, "deletion_failed"),
    ],
)
async def test_forget(
    tmp_path: Path, script: list[int], code: int, purged: bool, outcome: str
) -> None:
    """forget sends the deletion protocol and purges the history only after a 2xx."""
    server = ScriptedEndpoint([Reply(s) for s in script])
    await server.start()
    state = tmp_path / "state"
    now = int(time.time() * 1000)
    History(state).append([record(now, "aaaa1111"), record(now, "bbbb2222")], now)
    settings = tmp_path / "s.toml"
    settings.write_text(
        f'[[endpoints]]\nurl = "{server.url}"\ndeletion_url = "{server.url}del"\n'
        "[retry]\nmax_attempts = 2\ninitial_delay_s = 0.01\n"
    )
    env = {"USAGESTATSD_STATE_DIR": str(state), "PATH": "/usr/bin:/bin"}
    try:
        result = await run_cli(["forget", "--session", "aaaa1111", "--config", str(settings)], env)
    finally:
        await server.stop()
    assert result[0] == code, result
    assert json.loads(server.received[0][1]) == {
        "protocol": "usagestatsd-deletion/1",
        "session_ids": ["aaaa1111"],
    }
    kept = History(state).load().records
    reports = {r.session_id for r in kept if r.kind == "report"}
    assert ("aaaa1111" not in reports) is purged and "bbbb2222" in reports
    assert [r.outcome for r in kept if r.kind == "deletion"] == [outcome]


async def test_forget_endpoint_down(tmp_path: Path) -> None:
    """A deletion endpoint that is down: not confirmed, history kept, exit 1."""
    state = tmp_path / "state"
    now = int(time.time() * 1000)
    History(state).append([record(now, "aaaa1111")], now)
    settings = tmp_path / "s.toml"
    settings.write_text(
        '[[endpoints]]\nurl = "http://127.0.0.1:9/"\n'
        'deletion_url = "http://127.0.0.1:9/del"\n'
        "[retry]\nmax_attempts = 2\ninitial_delay_s = 0.01\n"
    )
    result = await run_cli(
        ["forget", "--all", "--config", str(settings)],
        {"USAGESTATSD_STATE_DIR": str(state), "PATH": "/usr/bin:/bin"},
    )
    assert result[0] == 1
    assert any(r.kind == "report" for r in History(state).load().records)


def test_forget_lists_sessions_and_the_email(tmp_path: Path) -> None:
    """Without arguments: the sessions, and the policy's deletion e-mail filled in."""
    state = tmp_path / "state"
    History(state).append([record(1, "aaaa1111"), record(5, "aaaa1111")], 5)
    result = cli("forget", env={"USAGESTATSD_STATE_DIR": str(state), "PATH": "/usr/bin:/bin"})
    out = result.stdout.decode()
    assert "aaaa1111" in out and "usage_stats@ray.io" in out


@pytest.mark.parametrize("name", [f for f in REPORT_FIELDS if redactable(f)])
async def test_every_field_can_be_redacted(
    name: str,
    demo_session: DemoCluster,
    temp_root: Path,
    make_settings: Callable[..., Settings],
) -> None:
    """A redacted field goes out blank; the report stays schema-valid; the reason is named."""
    settings = make_settings({"USAGESTATSD_REDACT": name})
    session = find_session(temp_root).session
    assert session is not None
    disclosure = Disclosure.of(settings, KnownIdentifiers())
    prepared = await prepare_report(settings, session, State(), disclosure, 1)
    body = json.loads(prepared.body)
    assert body[name] in (None, [], {})
    assert "redacted by environment variable USAGESTATSD_REDACT" in prepared.blanked[name]


def test_redacting_structural_fields_is_refused(tmp_path: Path) -> None:
    """session_id and the counters cannot be redacted: exit 78 naming the field."""
    result = cli("preview", env={"USAGESTATSD_REDACT": "session_id", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 78 and b"session_id" in result.stderr


async def test_older_field_set_nulls_newer_fields_until_accepted(
    demo_session: DemoCluster,
    endpoint: ScriptedEndpoint,
    temp_root: Path,
    state_dir: Path,
    tmp_path: Path,
) -> None:
    """Consent at field set 1 nulls exactly the newer fields; accepting un-nulls them."""
    env = consent_file_env(
        temp_root,
        state_dir,
        endpoint.url,
        tmp_path / "consent.json",
        '{"usage_stats": true, "usage_stats_fields_version": 1}',
    )
    with running_daemon(env) as daemon:
        await until(lambda: len(endpoint.received) >= 1)
        notice = daemon.wait_for("consent.fields_pending", 1)
    first = endpoint.bodies()[0]
    assert withheld(1) == ("libc_version", "hardware_usages")
    assert first["libc_version"] is None and first["hardware_usages"] == []
    assert "libc_version" in notice
    status = json.loads(cli("status", "--json", env=env).stdout)
    assert status["fields"]["accepted_version"] == 1
    assert status["fields"]["current_version"] == CURRENT_VERSION
    assert cli("enable", env=env).returncode == 0
    seen = len(endpoint.received)
    with running_daemon(env):
        await until(lambda: len(endpoint.received) > seen)
    assert endpoint.bodies()[seen]["libc_version"] == "glibc:2.36"


@needs_root
async def test_forget_as_root_leaves_the_service_its_history() -> None:
    """`sudo usagestatsd forget` in the state directory of a service run as Ray's user (here
    nobody): the rewritten history stays the service's, which goes on appending to it."""
    state = open_dir() / "state"
    state.mkdir(mode=0o750)
    os.chown(state, NOBODY, NOBODY)
    now = int(time.time() * 1000)
    assert as_user(lambda: str(History(state).append([record(now, "aaaa1111")], now))) == "0"
    server = ScriptedEndpoint([Reply(200)])
    await server.start()
    settings = state.parent / "s.toml"
    settings.write_text(f'[[endpoints]]\nurl = "{server.url}"\ndeletion_url = "{server.url}del"\n')
    env = {"USAGESTATSD_STATE_DIR": str(state), "PATH": "/usr/bin:/bin"}
    try:
        code, out, err = await run_cli(["forget", "--all", "--config", str(settings)], env)
    finally:
        await server.stop()
    assert code == 0, (out, err)
    history = state / "history.jsonl"
    assert (history.stat().st_uid, history.stat().st_mode & 0o777) == (NOBODY, 0o640)
    later = now + 1000
    appended = as_user(lambda: str(History(state).append([record(later, "cccc3333")], later)))
    assert appended == "0"  # not "PermissionError: ..."
    assert [r.session_id for r in History(state).load().records if r.kind == "report"] == [
        "cccc3333"
    ]


async def test_forget_names_the_copies_it_cannot_delete(tmp_path: Path) -> None:
    """A session that also went to Ray's endpoint (no deletion URL): before anything is
    purged, forget names that endpoint and prints the policy's e-mail for it."""
    server = ScriptedEndpoint([Reply(200)])
    await server.start()
    state = tmp_path / "state"
    now = int(time.time() * 1000)
    ray = Record("report", now, "aaaa1111", redact_url(DEFAULT_ENDPOINT_URL), "sent", 200,
                 None, "x", "{}")  # fmt: skip
    History(state).append([record(now, "aaaa1111"), ray], now)
    settings = tmp_path / "s.toml"
    settings.write_text(
        f'[[endpoints]]\nurl = "{server.url}"\ndeletion_url = "{server.url}del"\n'
        f'[[endpoints]]\nurl = "{DEFAULT_ENDPOINT_URL}"\n'
    )
    env = {"USAGESTATSD_STATE_DIR": str(state), "PATH": "/usr/bin:/bin"}
    try:
        code, out, _ = await run_cli(
            ["forget", "--session", "aaaa1111", "--config", str(settings)], env
        )
    finally:
        await server.stop()
    assert code == 0
    told = out.index("take no deletion request")
    assert redact_url(DEFAULT_ENDPOINT_URL) in out[told:] and "usage_stats@ray.io" in out[told:]
    assert "session_id aaaa1111" in out[told:]
    assert told < out.index("Deletion confirmed")
