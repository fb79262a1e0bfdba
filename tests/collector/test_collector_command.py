"""The console command: settings layers, exit 78 naming the setting, READY=1 under systemd."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.collector.harness import run_collector, running_collector
from usagestatsd.collector.settings import load_settings
from usagestatsd.config.settings import SettingsError


def test_defaults_and_layers(tmp_path: Path) -> None:
    """Loopback by default; file < environment (STATE_DIRECTORY) < command line."""
    absent = load_settings({}, {}, Path(os.devnull))  # no settings file at all
    assert absent.listen == ("127.0.0.1", 18924)
    assert absent.database == "sqlite:////var/lib/usagestatsd-collector/collector.sqlite3"
    config = tmp_path / "collector.toml"
    config.write_text('listen = "127.0.0.1:19000"\nretention_days = 30\nstate_dir = "/srv/a"\n')
    layered = load_settings(
        {"STATE_DIRECTORY": "/var/lib/usagestatsd-collector:/other"},
        {"retention_days": "7"},
        config,
    )
    assert layered.listen == ("127.0.0.1", 19000)
    assert layered.state_dir == Path("/var/lib/usagestatsd-collector")
    assert layered.retention_days == 7
    pg = load_settings({}, {"database_url": "postgresql://collector@127.0.0.1/usage"}, config)
    assert pg.backend == "postgresql"


@pytest.mark.parametrize(
    ("args", "env", "name"),
    [
        (["--listen", "nowhere"], {}, "listen"),
        (["--retention-days", "0"], {}, "retention_days"),
        (["--database-url", "mysql://x"], {}, "database_url"),
        ([], {"USAGESTATSD_COLLECTOR_INGEST_TOKENS": "short"}, "ingest_tokens"),
        (["--state-dir", "relative"], {}, "state_dir"),
    ],
)
def test_invalid_setting_exits_78_with_one_message(
    args: list[str], env: dict[str, str], name: str
) -> None:
    """One line on stderr naming the setting, exit status 78 (EX_CONFIG), nothing started."""
    result = run_collector(["serve", "--config", "/dev/null", *args], env)
    assert result.returncode == 78, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"invalid setting {name} " in lines[0]


def test_unknown_key_in_the_settings_file(tmp_path: Path) -> None:
    """A misspelt key is refused, named, with the file it came from."""
    config = tmp_path / "collector.toml"
    config.write_text("retention = 3\n")
    with pytest.raises(SettingsError, match="invalid setting retention from settings file"):
        load_settings({}, {}, config)
    result = run_collector(["serve", "--config", str(config)])
    assert result.returncode == 78 and "retention" in result.stderr


def test_port_in_use_is_one_error_and_exit_1(tmp_path: Path) -> None:
    """Another process holds the port: one collector.listen_failed event, exit 1."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_collector(
            [
                "serve",
                "--config",
                "/dev/null",
                "--state-dir",
                str(tmp_path),
                "--listen",
                f"127.0.0.1:{port}",
                "--log-format",
                "json",
            ]
        )
    assert result.returncode == 1
    assert "collector.listen_failed" in result.stderr


def test_ready_under_systemd(tmp_path: Path) -> None:
    """With NOTIFY_SOCKET: READY=1 once listening, STOPPING=1 on SIGTERM."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(10)
        with running_collector(tmp_path / "state", env={"NOTIFY_SOCKET": str(path)}) as c:
            ready = sock.recv(4096).decode()
            assert "READY=1" in ready and "STATUS=Listening on 127.0.0.1:" in ready
            assert c.stop() == 0
        assert "STOPPING=1" in sock.recv(4096).decode()


def test_absent_default_file_is_fine_but_a_named_one_must_exist(tmp_path: Path) -> None:
    """The default /etc file may be missing; a --config that names a missing file may not."""
    from usagestatsd.collector.settings import read_settings_file

    assert read_settings_file(tmp_path / "missing.toml", explicit=False) == {}
    with pytest.raises(SettingsError, match="invalid setting config"):
        read_settings_file(tmp_path / "missing.toml", explicit=True)
