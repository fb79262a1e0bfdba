"""A settings error never prints the credentials of an endpoint URL or a database DSN.

Whoever reads the error output (a terminal, the journal, a CI log) sees which setting and
which host were wrong, and `user:***@` where the password was.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.processes import run_cli
from usagestatsd.collector.settings import load_settings as load_collector_settings
from usagestatsd.config.settings import SettingsError, load_settings

SECRET = "hunter2-s3cret"
# Plain http to a host that is not this machine: refused, so the value is echoed.
BAD_URL = f"http://ops:{SECRET}@reports.example.com/usage"
MASKED = "http://ops:***@reports.example.com/usage"


def shown_once_masked(message: str) -> None:
    """The message names the URL with its password masked, and nowhere else holds it."""
    assert SECRET not in message
    assert MASKED in message


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("https://user:pw@host/", "https://user:***@host/"),
        ("postgresql://ray:pw@db:5432/usage", "postgresql://ray:***@db:5432/usage"),
        ("https://token@host/x", "https://***@host/x"),
        ("https://user:pa/ss@host/", "https://user:***@host/"),
        ("a https://h/ b http://u:p@h c", "a https://h/ b http://u:***@h c"),
        ("https://host/no-credentials", "https://host/no-credentials"),
    ],
)
def test_mask_credentials(text: str, masked: str) -> None:
    """Every URL's user info: the user kept, the password masked; a token alone masked."""
    from usagestatsd.config.declare import mask_credentials

    assert mask_credentials(text) == masked


def test_from_the_environment(tmp_path: Path) -> None:
    """RAY_USAGE_STATS_REPORT_URL with a password: the error masks it."""
    (tmp_path / "empty.toml").write_text("")
    with pytest.raises(SettingsError) as info:
        load_settings({"RAY_USAGE_STATS_REPORT_URL": BAD_URL}, {}, tmp_path / "empty.toml")
    shown_once_masked(str(info.value))


def test_from_the_settings_file(tmp_path: Path) -> None:
    """An [[endpoints]] table (shown whole when refused): its url is masked."""
    path = tmp_path / "settings.toml"
    path.write_text(f"[[endpoints]]\nurl = '{BAD_URL}'\n")
    with pytest.raises(SettingsError) as info:
        load_settings({}, {}, path)
    shown_once_masked(str(info.value))
    path.write_text(
        f"[[endpoints]]\nurl = 'https://a.example/'\nproxy = 'socks5://ops:{SECRET}@p/'"
    )
    with pytest.raises(SettingsError) as info:
        load_settings({}, {}, path)
    assert SECRET not in str(info.value) and "socks5://ops:***@p/" in str(info.value)


def test_collector_database_dsn(tmp_path: Path) -> None:
    """The collector's database URL, refused (not a scheme it takes): masked too."""
    dsn = f"mysql://usage:{SECRET}@db.example.com/usage"
    with pytest.raises(SettingsError) as info:
        load_collector_settings({"USAGESTATSD_COLLECTOR_DATABASE_URL": dsn}, {}, Path("/dev/null"))
    assert SECRET not in str(info.value)
    assert "mysql://usage:***@db.example.com/usage" in str(info.value)


@pytest.mark.parametrize("layer", ["flag", "environment", "file"])
async def test_the_command_line_prints_no_password(tmp_path: Path, layer: str) -> None:
    """The real command line, the bad URL from each layer: exit 78, the password masked."""
    settings = tmp_path / "settings.toml"
    settings.write_text(f"[[endpoints]]\nurl = '{BAD_URL}'\n" if layer == "file" else "")
    args = ["run", "--config", str(settings)]
    env = {"USAGESTATSD_STATE_DIR": str(tmp_path / "state")}
    if layer == "flag":
        args += ["--endpoint", BAD_URL]
    if layer == "environment":
        env["RAY_USAGE_STATS_REPORT_URL"] = BAD_URL
    code, out, err = await run_cli(args, env)
    assert code == 78, err
    assert SECRET not in out + err
    assert MASKED in err and "endpoints" in err
