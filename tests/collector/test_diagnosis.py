"""When the database cannot be had: one message an operator can act on, never a password."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.collector.harness import PostgresServer, run_collector

PASSWORD = "pw-hunter2-secret"
WITHOUT_PSYCOPG = (
    "import sys; sys.modules['psycopg'] = None;"  # as on a machine without python3-psycopg
    "from usagestatsd.collector.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(dsn: str, state: Path) -> tuple[int, list[dict[str, object]], str]:
    args = ["serve", "--config", "/dev/null", "--log-format", "json"]
    result = run_collector([*args, "--state-dir", str(state), "--database-url", dsn])
    output = result.stdout + result.stderr
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return result.returncode, events, output


def test_without_psycopg_one_message_names_the_package_and_exit_78(tmp_path: Path) -> None:
    """Not a restart every 5 s: exit 78 (the unit's RestartPreventExitStatus=), saying what
    to install."""
    dsn = f"postgresql://collector:{PASSWORD}@127.0.0.1:{_closed_port()}/usage"
    args = ["--log-format", "json", "--state-dir", str(tmp_path), "--database-url", dsn]
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_PSYCOPG, "serve", "--config", "/dev/null", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 78, result
    output = result.stdout + result.stderr
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events] == ["store.driver_missing"]
    assert "python3-psycopg" in str(events[0]["detail"])
    assert PASSWORD not in output
    unit = Path(__file__).parents[2] / "systemd" / "usagestatsd-collector.service"
    assert "RestartPreventExitStatus=78" in unit.read_text()


def test_unreachable_server_is_named_by_its_own_error(tmp_path: Path) -> None:
    """Nothing listening: the driver's text (connection refused), not `detail=null`."""
    code, events, output = _serve(
        f"postgresql://collector:{PASSWORD}@127.0.0.1:{_closed_port()}/usage", tmp_path
    )
    assert code == 1
    failed = [e for e in events if e["event"] == "store.open_failed"]
    assert len(failed) == 1 and "refused" in str(failed[0]["detail"]).lower(), output
    assert PASSWORD not in output


@pytest.mark.postgres
def test_refused_login_is_named_by_the_servers_error(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """A role the server does not know: its own FATAL text, never the password."""
    dsn = f"postgresql://nosuchrole:{PASSWORD}@127.0.0.1:{postgres.port}/postgres"
    code, events, output = _serve(dsn, tmp_path)
    assert code == 1
    failed = [e for e in events if e["event"] == "store.open_failed"]
    assert len(failed) == 1 and 'role "nosuchrole" does not exist' in str(failed[0]["detail"])
    assert PASSWORD not in output


def _password_role(postgres: PostgresServer, role: str, password: str) -> None:
    """A role that logs in with a password over TCP (the test cluster trusts the rest)."""
    import psycopg

    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        hba = Path(str(conn.execute("SHOW hba_file").fetchone()[0]))  # type: ignore[index]
        rule = f"host all {role} 127.0.0.1/32 scram-sha-256\n"
        if rule not in hba.read_text():
            hba.write_text(rule + hba.read_text())
        conn.execute("SELECT pg_reload_conf()")


@pytest.mark.postgres
def test_wrong_password_is_named_by_the_servers_error(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """The server's own words (password authentication failed), neither password."""
    _password_role(postgres, "pwcollector", "the-right-one-0451")
    dsn = f"postgresql://pwcollector:{PASSWORD}@127.0.0.1:{postgres.port}/postgres"
    code, events, output = _serve(dsn, tmp_path)
    assert code == 1
    failed = [e for e in events if e["event"] == "store.open_failed"]
    expected = 'password authentication failed for user "pwcollector"'
    assert len(failed) == 1 and expected in str(failed[0]["detail"]), output
    assert PASSWORD not in output and "the-right-one-0451" not in output
