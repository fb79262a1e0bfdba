"""Settings: layering, Ray's variable names, and errors that name setting, source and value."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from usagestatsd.config.settings import (
    DECLARED,
    DEFAULT_ENDPOINT_URL,
    ConsentInputs,
    SettingsError,
    SystemdHandoff,
    load_settings,
)


def write(tmp_path: Path, text: str) -> Path:
    """A settings file with `text`."""
    path = tmp_path / "usagestatsd.toml"
    path.write_text(text)
    return path


def test_defaults(tmp_path: Path) -> None:
    """With nothing set: Ray's endpoint, hourly, /tmp/ray, source OSS."""
    s = load_settings({"HOME": "/home/x"}, {}, write(tmp_path, ""), euid=0)
    assert [e.url for e in s.endpoints] == [DEFAULT_ENDPOINT_URL]
    assert s.report_interval_s == 3600
    assert s.temp_root == Path("/tmp/ray")
    assert s.state_dir == Path("/var/lib/usagestatsd")
    assert s.source == "OSS"
    assert s.consent_file == Path("/home/x/.ray/config.json")


def test_layers_file_then_env_then_cli(tmp_path: Path) -> None:
    """defaults < file < environment < command line, and each value knows its source."""
    path = write(tmp_path, "report_interval_s = 100\nsource = 'file'\nlog_level = 'debug'\n")
    s = load_settings(
        {"RAY_USAGE_STATS_REPORT_INTERVAL_S": "200", "RAY_USAGE_STATS_SOURCE": "env"},
        {"report_interval_s": "300"},
        path,
    )
    assert s.report_interval_s == 300
    assert s.source == "env"
    assert s.log_level == "debug"
    assert s.source_of("report_interval_s") == "command line --interval"
    assert s.source_of("source") == "environment variable RAY_USAGE_STATS_SOURCE"
    assert s.source_of("log_level") == f"settings file {path}"


def test_ray_variables_keep_their_meaning(tmp_path: Path) -> None:
    """RAY_TMPDIR, REPORT_URL and EXTRA_TAGS mean what they mean to Ray."""
    s = load_settings(
        {
            "RAY_TMPDIR": "/scratch",
            "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9999/x",
            "RAY_USAGE_STATS_EXTRA_TAGS": "team=ml;env=prod;",
            "RAY_USAGE_STATS_CONFIG_PATH": "/etc/ray-consent.json",
        },
        {},
        write(tmp_path, ""),
    )
    assert s.temp_root == Path("/scratch/ray")
    assert [e.url for e in s.endpoints] == ["http://127.0.0.1:9999/x"]
    assert dict(s.extra_tags) == {"team": "ml", "env": "prod"}
    assert s.consent_file == Path("/etc/ray-consent.json")


def test_state_directory_from_systemd(tmp_path: Path) -> None:
    """systemd's $STATE_DIRECTORY (first entry) is the state directory."""
    s = load_settings(
        {"STATE_DIRECTORY": "/var/lib/usagestatsd:/var/lib/other"}, {}, write(tmp_path, "")
    )
    assert s.state_dir == Path("/var/lib/usagestatsd")


def test_several_endpoints_with_tls_and_proxy(tmp_path: Path) -> None:
    """An enterprise lists its endpoints, each with CA bundle and proxy."""
    path = write(
        tmp_path,
        """
[[endpoints]]
url = "https://usage-stats.ray.io/"
[[endpoints]]
url = "https://stats.corp.example/ray"
ca_bundle = "/etc/ssl/corp.pem"
proxy = "http://proxy.corp.example:3128"
""",
    )
    s = load_settings({}, {}, path)
    assert [e.url for e in s.endpoints] == [
        "https://usage-stats.ray.io/",
        "https://stats.corp.example/ray",
    ]
    assert s.endpoints[1].ca_bundle == Path("/etc/ssl/corp.pem")
    assert s.endpoints[1].proxy == "http://proxy.corp.example:3128"


@pytest.mark.parametrize(
    ("env", "setting", "source"),
    [
        (
            {"RAY_USAGE_STATS_REPORT_INTERVAL_S": "hourly"},
            "report_interval_s",
            "environment variable RAY_USAGE_STATS_REPORT_INTERVAL_S",
        ),
        ({"RAY_USAGE_STATS_REPORT_INTERVAL_S": "-1"}, "report_interval_s", "RAY_USAGE"),
        ({"RAY_USAGE_STATS_REPORT_INTERVAL_S": "nan"}, "report_interval_s", "RAY_USAGE"),
        ({"RAY_USAGE_STATS_REPORT_URL": "http://stats.example.com/"}, "endpoints", "REPORT_URL"),
        ({"RAY_USAGE_STATS_REPORT_URL": "ftp://x/"}, "endpoints", "REPORT_URL"),
        ({"RAY_USAGE_STATS_EXTRA_TAGS": "novalue"}, "extra_tags", "EXTRA_TAGS"),
        ({"RAY_USAGE_STATS_EXTRA_TAGS": "bad key=1"}, "extra_tags", "EXTRA_TAGS"),
        ({"RAY_TMPDIR": "relative/dir"}, "temp_root", "RAY_TMPDIR"),
        ({"USAGESTATSD_LOG_FORMAT": "xml"}, "log_format", "USAGESTATSD_LOG_FORMAT"),
        ({"USAGESTATSD_RETRY_MAX_ATTEMPTS": "0"}, "retry.max_attempts", "RETRY_MAX"),
        ({"USAGESTATSD_RAY_USER": "no-such-user-here"}, "ray_user", "USAGESTATSD_RAY_USER"),
        ({"USAGESTATSD_RAY_USER": "-5"}, "ray_user", "USAGESTATSD_RAY_USER"),
        ({"USAGESTATSD_RAY_USER": "nobody"}, "ray_user", "USAGESTATSD_RAY_USER"),
        ({"USAGESTATSD_RAY_USER": "65534"}, "ray_user", "USAGESTATSD_RAY_USER"),
    ],
)
def test_invalid_environment_values(
    tmp_path: Path, env: dict[str, str], setting: str, source: str
) -> None:
    """A bad value names the setting, its source, the value and what is accepted."""
    with pytest.raises(SettingsError) as info:
        load_settings(env, {}, write(tmp_path, ""))
    message = str(info.value)
    assert info.value.name == setting
    assert source in message
    assert "expected" in message
    assert next(iter(env.values()))[:10] in message


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("report_interval_s = 'soon'", "report_interval_s"),
        ("reprot_interval_s = 5", "reprot_interval_s"),
        ("[[endpoints]]\nurl = 5", "endpoints"),
        ("[[endpoints]]\nurl = 'https://a/'\ncolor = 'red'", "endpoints"),
        ("this is = not toml [", "config"),
        ("disable_usage_stats = 'maybe'", "disable_usage_stats"),
    ],
)
def test_invalid_settings_file(tmp_path: Path, text: str, name: str) -> None:
    """A bad settings file names the key and the file."""
    path = write(tmp_path, text)
    with pytest.raises(SettingsError) as info:
        load_settings({}, {}, path)
    assert info.value.name == name
    assert str(path) in str(info.value)


def test_explicit_missing_settings_file(tmp_path: Path) -> None:
    """--config pointing nowhere is an error; the default file may be absent."""
    with pytest.raises(SettingsError, match="an existing file"):
        load_settings({}, {}, tmp_path / "absent.toml")


def test_huge_settings_file(tmp_path: Path) -> None:
    """A settings file over 1 MiB is refused, not parsed."""
    path = write(tmp_path, "# " + "x" * (2 << 20))
    with pytest.raises(SettingsError, match="1 MiB"):
        load_settings({}, {}, path)


def test_http_allowed_only_to_loopback(tmp_path: Path) -> None:
    """Plain http:// is accepted for 127.0.0.1, ::1 and localhost only."""
    for url in ("http://127.0.0.1:8/", "http://[::1]:8/", "http://localhost/"):
        s = load_settings({"RAY_USAGE_STATS_REPORT_URL": url}, {}, write(tmp_path, ""))
        assert s.endpoints[0].url == url


def test_endpoint_display_hides_credentials(tmp_path: Path) -> None:
    """What is logged of an endpoint carries no user, password or query."""
    s = load_settings(
        {"RAY_USAGE_STATS_REPORT_URL": "https://u:secret@stats.example/p?token=t"},
        {},
        write(tmp_path, ""),
    )
    assert s.endpoints[0].display == "https://stats.example/p"


def test_ray_user_is_a_name_or_a_uid(tmp_path: Path) -> None:
    """ray_user: a known name becomes its uid, a number is a uid (never nobody); none by default."""
    assert load_settings({}, {}, write(tmp_path, "")).ray_user is None
    assert load_settings({"USAGESTATSD_RAY_USER": "root"}, {}, write(tmp_path, "")).ray_user == 0
    assert load_settings({}, {}, write(tmp_path, "ray_user = 1234")).ray_user == 1234


CONFIGURATION_MD = Path(__file__).parents[2] / "docs" / "configuration.md"


def _reference_rows() -> list[list[str]]:
    """The rows of the settings table of docs/configuration.md, as their five cells."""
    text = CONFIGURATION_MD.read_text()
    table = text.split("| setting (TOML key) |", 1)[1].split("\n\n", 1)[0]
    rows = [line.strip().strip("|").split("|") for line in table.splitlines()[2:]]
    assert rows and all(len(row) == 5 for row in rows), "the table has five columns"
    return [[cell.strip() for cell in row] for row in rows]


def _row_key(cell: str) -> str | None:
    """The settings-file key a row documents: `[retry]` `budget_s` is retry.budget_s."""
    words: list[str] = re.findall(r"`([^`]+)`", cell)
    if not words:
        return None
    if words[0].startswith("[["):  # an array of tables: the key is its name
        return words[0].strip("[]")
    if words[0].startswith("["):
        return f"{words[0].strip('[]')}.{words[1]}"
    return words[0]


def test_configuration_md_documents_every_declared_setting() -> None:
    """Each declared setting has its row in docs/configuration.md, with its file key,
    environment variables, flag, default and doc line; no row documents an undeclared key."""
    rows = _reference_rows()
    by_key = {_row_key(row[0]): row for row in rows}
    for d in DECLARED:
        if d.file_key:
            assert d.file_key in by_key, f"{d.name}: no row for the key {d.file_key}"
            row = by_key[d.file_key]
        else:
            first = d.env[0].name
            row = next((r for r in rows if f"`{first}`" in r[1]), [])
            assert row, f"{d.name}: no row for {first}"
        _key, env, flag, default, accepted = row
        documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", env))
        assert documented == {e.name for e in d.env}, f"{d.name}: environment column"
        flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", flag))
        assert flags == ({d.flag_name} if d.flag_name else set()), f"{d.name}: flag column"
        assert default.startswith(d.doc_default), f"{d.name}: default {d.doc_default}"
        assert d.doc and d.doc in accepted, f"{d.name}: accepted should say {d.doc!r}"
    declared_keys = {d.file_key for d in DECLARED}
    assert set(by_key) - {None} <= declared_keys, "rows for keys that are not settings"
    consent_row = next(r for r in rows if not r[0] and "consent" in r[4])
    assert set(re.findall(r"`([A-Z][A-Z0-9_]+)`", consent_row[1])) == set(ConsentInputs.VARIABLES)


def test_systemd_handoff_and_consent_inputs_are_their_own_types(tmp_path: Path) -> None:
    """What systemd hands the process is read leniently; the consent inputs are kept raw."""
    s = load_settings(
        {
            "NOTIFY_SOCKET": "@notify",
            "WATCHDOG_USEC": "not-a-number",
            "WATCHDOG_PID": "42",
            "JOURNAL_STREAM": "8:1234",
            "RAY_USAGE_STATS_ENABLED": "maybe",
            "DO_NOT_TRACK": "",
        },
        {},
        write(tmp_path, ""),
    )
    assert s.systemd == SystemdHandoff("@notify", None, 42, "8:1234")
    assert (s.notify_socket, s.watchdog_usec, s.journal_stream) == ("@notify", None, "8:1234")
    assert s.consent_inputs == ConsentInputs("maybe", "", None)


def test_defaults_are_the_declared_ones(tmp_path: Path) -> None:
    """An empty settings file gives every setting its declared default (as root)."""
    s = load_settings({"HOME": "/home/x"}, {}, write(tmp_path, ""), euid=0)
    for d in DECLARED:
        group, _, name = d.name.rpartition(".")
        value = getattr(getattr(s, group) if group else s, name)
        if d.name == "consent_file":
            assert value == Path("/home/x/.ray/config.json")
        else:
            assert value == d.default, d.name
        assert s.source_of(d.name) == "default"
