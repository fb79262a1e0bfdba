"""Tokens and passwords: deletion has its own token, and no secret is ever echoed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.collector.harness import (
    Answer,
    PostgresServer,
    http,
    run_collector,
    running_collector,
    sample_report,
)
from tests.support.hostile import as_user, needs_root

PROTOCOL = "usagestatsd-deletion/1"
INGEST = "ingest-token-0123456789abcdef"
DELETION = "deletion-token-fedcba9876543210"
HELD, UNKNOWN = "ab" * 16, "cd" * 16


def _delete_as_nobody(url: str, token: str, session_id: str) -> Answer:
    """POST /delete from a process of the local user nobody (anyone on the machine)."""

    def attack() -> str:
        body = json.dumps({"protocol": PROTOCOL, "session_ids": [session_id]}).encode()
        auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        answer = http(url + "delete", body, auth)
        return json.dumps([answer.status, answer.body.decode()])

    status, body = json.loads(as_user(attack))
    return Answer(status, {}, body.encode())


@needs_root
def test_the_ingest_token_deletes_nothing_and_tells_nothing(tmp_path: Path) -> None:
    """A holder of the ingest token (every head has it) cannot delete a session, and is told
    the same for a held and an unknown id; the deletion token's holder still can."""
    env = {
        "USAGESTATSD_COLLECTOR_INGEST_TOKENS": INGEST,
        "USAGESTATSD_COLLECTOR_DELETION_TOKENS": DELETION,
    }
    with running_collector(tmp_path / "state", env=env) as c:
        auth = {"Authorization": f"Bearer {INGEST}"}
        assert c.post(sample_report(HELD, 0), headers=auth).status == 200
        held = _delete_as_nobody(c.url, INGEST, HELD)
        unknown = _delete_as_nobody(c.url, INGEST, UNKNOWN)
        assert (held.status, held.body) == (unknown.status, unknown.body)
        assert held.status == 401
        assert c.get(f"/api/sessions/{HELD}").status == 200
        assert _delete_as_nobody(c.url, DELETION, UNKNOWN).status == 404
        assert _delete_as_nobody(c.url, DELETION, HELD).status == 200
        assert c.get(f"/api/sessions/{HELD}").status == 404


@needs_root
def test_without_a_deletion_token_deletion_is_disabled(tmp_path: Path) -> None:
    """Ingest tokens set, no deletion token: nobody holding the ingest token deletes
    nothing (403, the same for every id), and the collector says so on each request."""
    env = {"USAGESTATSD_COLLECTOR_INGEST_TOKENS": INGEST}
    with running_collector(tmp_path / "state", env=env) as c:
        auth = {"Authorization": f"Bearer {INGEST}"}
        assert c.post(sample_report(HELD, 0), headers=auth).status == 200
        held = _delete_as_nobody(c.url, INGEST, HELD)
        unknown = _delete_as_nobody(c.url, INGEST, UNKNOWN)
        assert held.status == unknown.status == 403
        assert held.body == unknown.body
        assert c.get(f"/api/sessions/{HELD}").status == 200
        assert len(c.events("deletion.disabled", at_least=2)) == 2


def test_a_deletion_token_that_is_also_an_ingest_token_is_refused() -> None:
    """Exit 78, naming deletion_tokens, without quoting either token."""
    env = {
        "USAGESTATSD_COLLECTOR_INGEST_TOKENS": f"{INGEST},{DELETION}",
        "USAGESTATSD_COLLECTOR_DELETION_TOKENS": DELETION,
    }
    result = run_collector(["serve", "--config", "/dev/null"], env)
    assert result.returncode == 78, result
    assert "invalid setting deletion_tokens" in result.stderr
    assert DELETION not in result.stderr and INGEST not in result.stderr


def test_settings_errors_never_quote_a_secret(tmp_path: Path) -> None:
    """A bad token, a bad DSN with a password, a misspelt token key: named, never quoted."""
    secret = "hunter2-hunter2-hunter2"
    misspelt = tmp_path / "collector.toml"
    misspelt.write_text(f'ingest_token = ["{secret}"]\n')
    cases = [
        (["--config", "/dev/null"], {"USAGESTATSD_COLLECTOR_INGEST_TOKENS": f"{secret} x"}),
        (["--config", "/dev/null"], {"USAGESTATSD_COLLECTOR_DELETION_TOKENS": f"{secret}\u00e9"}),
        (["--config", "/dev/null", "--database-url", f"mysql://u:{secret}@db/x"], {}),
        (["--config", "/dev/null", "--database-url", f"mysql://db/x?password={secret}"], {}),
        (["--config", str(misspelt)], {}),
    ]
    for args, env in cases:
        result = run_collector(["serve", *args], env)
        assert result.returncode == 78, (args, result)
        assert "invalid setting" in result.stderr
        assert secret not in result.stderr, result.stderr


def _secret_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


@needs_root
@pytest.mark.postgres
def test_database_password_from_a_file_is_not_in_ps(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """`--database-url-file`: the collector runs on PostgreSQL, and nobody reading its
    command line (what `ps` shows every user) finds no password; nor does its log."""
    password = "pg-password-0123456789"
    dsn = postgres.dsn.replace("@", f":{password}@", 1)
    url_file = _secret_file(tmp_path / "database_url", dsn)
    with running_collector(tmp_path / "state", ["--database-url-file", str(url_file)]) as c:
        assert c.events("collector.listening", at_least=1)[0]["backend"] == "postgresql"
        pid = c.proc.pid
        seen = as_user(lambda: Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"))
        assert "--database-url-file" in seen and password not in seen
        assert c.post(sample_report(HELD, 0)).status == 200
        c.stop()
        assert password not in "\n".join(c.lines)


def test_tokens_from_a_file_and_from_a_systemd_credential(tmp_path: Path) -> None:
    """USAGESTATSD_COLLECTOR_INGEST_TOKENS_FILE and $CREDENTIALS_DIRECTORY/deletion_tokens
    (LoadCredential=): both in force, neither logged."""
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    _secret_file(credentials / "deletion_tokens", DELETION, 0o400)
    env = {
        "USAGESTATSD_COLLECTOR_INGEST_TOKENS_FILE": str(
            _secret_file(tmp_path / "ingest", f"{INGEST}\nsecond-token-0123456789")
        ),
        "CREDENTIALS_DIRECTORY": str(credentials),
    }
    with running_collector(tmp_path / "state", env=env) as c:
        assert c.post(sample_report(HELD, 0)).status == 401
        auth = {"Authorization": "Bearer second-token-0123456789"}
        assert c.post(sample_report(HELD, 0), headers=auth).status == 200
        deletion = {"protocol": PROTOCOL, "session_ids": [HELD]}
        assert c.post(deletion, "delete", {"Authorization": f"Bearer {INGEST}"}).status == 401
        assert c.post(deletion, "delete", {"Authorization": f"Bearer {DELETION}"}).status == 200
        c.stop()
        logs = "\n".join(c.lines)
    assert INGEST not in logs and DELETION not in logs


def test_a_secret_file_others_may_read_is_refused(tmp_path: Path) -> None:
    """Mode 0644: exit 78 naming the setting and the file, its content not quoted."""
    loose = _secret_file(tmp_path / "ingest", INGEST, 0o644)
    result = run_collector(
        ["serve", "--config", "/dev/null"], {"USAGESTATSD_COLLECTOR_INGEST_TOKENS_FILE": str(loose)}
    )
    assert result.returncode == 78, result
    assert "invalid setting ingest_tokens" in result.stderr and "0600" in result.stderr
    assert INGEST not in result.stderr
