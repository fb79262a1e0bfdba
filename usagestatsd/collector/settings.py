"""The collector's settings: defaults < settings file < environment < command line.

Every value is validated once, here; a bad one raises `SettingsError` (shared with the
daemon) naming the setting, where it came from and what is accepted, and the CLI exits 78.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from usagestatsd.settings import LOG_FORMATS, LOG_LEVELS, SettingsError, read_toml_file

DEFAULT_SETTINGS_FILE = Path("/etc/usagestatsd-collector/collector.toml")
DEFAULT_STATE_DIR = Path("/var/lib/usagestatsd-collector")
DEFAULT_PORT = 18924
MAX_SETTINGS_FILE_BYTES = 1 << 20


@dataclass(frozen=True)
class CollectorSettings:
    """Everything the collector was told, validated."""

    settings_file: Path | None = None
    listen: tuple[str, int] = ("127.0.0.1", DEFAULT_PORT)
    state_dir: Path = DEFAULT_STATE_DIR
    database_url: str = ""
    retention_days: int = 365
    ingest_tokens: tuple[str, ...] = ()
    deletion_tokens: tuple[str, ...] = ()
    max_report_bytes: int = 64 << 10
    max_pending: int = 5000
    log_format: str = "auto"
    log_level: str = "info"
    notify_socket: str | None = None
    journal_stream: str | None = None

    @property
    def database(self) -> str:
        """The database URL actually used: the DSN given, else SQLite in the state dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.state_dir / 'collector.sqlite3'}"

    @property
    def backend(self) -> str:
        """'sqlite' or 'postgresql'."""
        return "sqlite" if self.database.startswith("sqlite:") else "postgresql"

    @property
    def sqlite_path(self) -> Path:
        """The SQLite file (only meaningful when backend == 'sqlite')."""
        return Path(self.database.removeprefix("sqlite://"))


def parse_listen(raw: object) -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets); any host is accepted but loopback is the default."""
    accepted = "HOST:PORT, e.g. 127.0.0.1:18924 or [::1]:18924"
    if not isinstance(raw, str):
        raise ValueError(accepted)
    host, sep, port = raw.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(accepted)
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(accepted + " (an IP address or localhost)") from None
    return host, int(port)


def parse_database_url(raw: object) -> str:
    """'' (SQLite in the state dir), sqlite:///ABSOLUTE/PATH, or a postgresql:// DSN."""
    accepted = "empty, sqlite:///ABSOLUTE/PATH, or postgresql://USER@HOST/DB"
    if not isinstance(raw, str):
        raise ValueError(accepted)
    text = raw.strip()
    if not text:
        return ""
    scheme = urlsplit(text).scheme
    if scheme == "sqlite" and text.startswith("sqlite:////"):
        return text
    if scheme in ("postgresql", "postgres"):
        return text
    raise ValueError(accepted)


def _integer(low: int, high: int) -> Callable[[object], int]:
    accepted = f"a whole number from {low} to {high}"

    def parse(raw: object) -> int:
        if isinstance(raw, bool) or not isinstance(raw, (int, str)):
            raise ValueError(accepted)
        text = str(raw).strip()
        if not text.lstrip("-").isdigit() or not low <= int(text) <= high:
            raise ValueError(accepted)
        return int(text)

    return parse


def _choice(options: tuple[str, ...]) -> Callable[[object], str]:
    def parse(raw: object) -> str:
        if not isinstance(raw, str) or raw not in options:
            raise ValueError("one of " + ", ".join(options))
        return raw

    return parse


def _absolute_dir(raw: object) -> Path:
    if not isinstance(raw, str) or not raw.startswith("/"):
        raise ValueError("an absolute directory path")
    return Path(raw)


def _tokens(raw: object) -> tuple[str, ...]:
    accepted = "a list of tokens (16 to 512 printable ASCII characters, no spaces)"
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list):
        raise ValueError(accepted)
    out = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(accepted)
        token = item.strip()
        if not token:
            continue
        if not 16 <= len(token) <= 512 or not all(33 <= ord(c) < 127 for c in token):
            raise ValueError(accepted)
        out.append(token)
    return tuple(out)


@dataclass(frozen=True)
class _Spec:
    name: str
    env: tuple[str, ...]
    parse: Callable[[object], Any]
    cli: bool = True


_SPECS: tuple[_Spec, ...] = (
    _Spec("listen", ("USAGESTATSD_COLLECTOR_LISTEN",), parse_listen),
    _Spec("state_dir", ("STATE_DIRECTORY", "USAGESTATSD_COLLECTOR_STATE_DIR"), _absolute_dir),
    _Spec("database_url", ("USAGESTATSD_COLLECTOR_DATABASE_URL",), parse_database_url),
    _Spec("retention_days", ("USAGESTATSD_COLLECTOR_RETENTION_DAYS",), _integer(1, 36500)),
    _Spec("ingest_tokens", ("USAGESTATSD_COLLECTOR_INGEST_TOKENS",), _tokens, cli=False),
    _Spec("deletion_tokens", ("USAGESTATSD_COLLECTOR_DELETION_TOKENS",), _tokens, cli=False),
    _Spec("max_report_bytes", (), _integer(4096, 16 << 20), cli=False),
    _Spec("max_pending", (), _integer(10, 1_000_000), cli=False),
    _Spec("log_format", ("USAGESTATSD_COLLECTOR_LOG_FORMAT",), _choice(LOG_FORMATS)),
    _Spec("log_level", ("USAGESTATSD_COLLECTOR_LOG_LEVEL",), _choice(LOG_LEVELS)),
)
SETTING_NAMES = tuple(spec.name for spec in _SPECS)


def read_settings_file(path: Path, explicit: bool) -> dict[str, Any]:
    """The TOML settings file; {} when the default file is absent."""
    table = read_toml_file(path, explicit) or {}
    for key in table:
        if key not in SETTING_NAMES:
            source = f"settings file {path}"
            raise SettingsError(key, source, table[key], "no such setting; see docs/collector.md")
    return table


def load_settings(
    env: Mapping[str, str], cli: Mapping[str, object] | None = None, path: Path | None = None
) -> CollectorSettings:
    """Build the settings from every layer; raises SettingsError on the first bad value."""
    cli = dict(cli or {})
    file_path = path or DEFAULT_SETTINGS_FILE
    file_values = read_settings_file(file_path, path is not None)
    values: dict[str, Any] = {}

    def take(name: str, raw: object, source: str, parse: Callable[[object], Any]) -> None:
        try:
            values[name] = parse(raw)
        except ValueError as exc:
            raise SettingsError(name, source, raw, str(exc)) from None

    for spec in _SPECS:
        if spec.name in file_values:
            take(spec.name, file_values[spec.name], f"settings file {file_path}", spec.parse)
        for var in spec.env:
            if env.get(var):
                # systemd may hand several colon-separated directories: the first is ours.
                raw = env[var].split(":")[0] if var == "STATE_DIRECTORY" else env[var]
                take(spec.name, raw, f"environment variable {var}", spec.parse)
        if spec.cli and cli.get(spec.name) is not None:
            flag = "--" + spec.name.replace("_", "-")
            take(spec.name, cli[spec.name], f"command line {flag}", spec.parse)
    return CollectorSettings(
        settings_file=file_path if file_values else None,
        notify_socket=env.get("NOTIFY_SOCKET") or None,
        journal_stream=env.get("JOURNAL_STREAM") or None,
        **values,
    )
