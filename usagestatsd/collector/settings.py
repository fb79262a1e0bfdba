"""The collector's settings: defaults < settings file < environment < command line.

Every value is validated once, here; a bad one raises `SettingsError` (shared with the
daemon) naming the setting, where it came from and what is accepted, and the CLI exits 78.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from usagestatsd.collector.secrets import MASKED, secret_values
from usagestatsd.config.declare import (
    Declaration,
    Env,
    Flag,
    SettingsError,
    declarations,
    gather,
    read_toml_file,
    setting,
)
from usagestatsd.config.settings import LOG_FORMATS, LOG_LEVELS, LogFormat, LogLevel
from usagestatsd.config.values import (
    Choice,
    first_entry,
    integer_in,
    is_ip_or_localhost,
    split_host_port,
)

DEFAULT_SETTINGS_FILE = Path("/etc/usagestatsd-collector/collector.toml")
DEFAULT_STATE_DIR = Path("/var/lib/usagestatsd-collector")
DEFAULT_PORT = 18924
MAX_SETTINGS_FILE_BYTES = 1 << 20
# Values never echoed in an error: a token, or a DSN's password.
SECRET_SETTINGS = ("ingest_tokens", "deletion_tokens")
_TAG_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_DSN_PASSWORD = re.compile(r"(://[^:/@?#]*:)[^@/?#]*@|(password=)[^&\s]*", re.IGNORECASE)
# The exit status for a settings or database problem (sysexits EX_CONFIG, 78): the unit
# does not restart on it, so a wrong setting is one message, not a loop.
EXIT_SETTINGS = 78


def parse_listen(raw: object) -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets); any host is accepted but loopback is the default."""
    accepted = "HOST:PORT, e.g. 127.0.0.1:18924 or [::1]:18924"
    host, port = split_host_port(raw, accepted)
    if not is_ip_or_localhost(host):
        raise ValueError(accepted + " (an IP address or localhost)")
    return host, port


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


def _absolute_dir(raw: object) -> Path:
    if not isinstance(raw, str) or not raw.startswith("/"):
        raise ValueError("an absolute directory path")
    return Path(raw)


def _tag_key(raw: object) -> str:
    """'' (no grouping) or a tag key as usagestatsd's `extra_tags` accepts one."""
    if not isinstance(raw, str) or not (raw == "" or _TAG_KEY.fullmatch(raw)):
        raise ValueError("empty, or a tag key of 1 to 64 characters from A-Z a-z 0-9 _ . -")
    return raw


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
class CollectorSettings:
    """Everything the collector was told, validated."""

    listen: tuple[str, int] = setting(
        ("127.0.0.1", DEFAULT_PORT),
        parse_listen,
        env=("USAGESTATSD_COLLECTOR_LISTEN",),
        flag=Flag(help="HOST:PORT (default 127.0.0.1:18924)"),
    )
    state_dir: Path = setting(
        DEFAULT_STATE_DIR,
        _absolute_dir,
        env=(Env("STATE_DIRECTORY", pick=first_entry), "USAGESTATSD_COLLECTOR_STATE_DIR"),
        flag=Flag(help="directory of the SQLite database"),
    )
    database_url: str = setting(
        "",
        parse_database_url,
        env=("USAGESTATSD_COLLECTOR_DATABASE_URL",),
        flag=Flag(help="postgresql:// DSN, or sqlite:///PATH"),
    )
    retention_days: int = setting(
        365,
        integer_in(1, 36500),
        env=("USAGESTATSD_COLLECTOR_RETENTION_DAYS",),
        flag=Flag(help="keep reports this many days"),
    )
    ingest_tokens: tuple[str, ...] = setting(
        (), _tokens, env=("USAGESTATSD_COLLECTOR_INGEST_TOKENS",)
    )
    deletion_tokens: tuple[str, ...] = setting(
        (), _tokens, env=("USAGESTATSD_COLLECTOR_DELETION_TOKENS",)
    )
    # A real report is 1 to 2 KB (Ray 2.60 with its usage tags: about 1.9 KB); 16 KiB is
    # eight times that, and bounds what one sender can make the collector store.
    max_report_bytes: int = setting(16 << 10, integer_in(4096, 16 << 20))
    max_pending: int = setting(5000, integer_in(10, 1_000_000))
    # Enough that a thousand idle connections are simply held (each costs a descriptor and
    # a few KiB) until their deadline; past it, making room costs an accept and a close
    # per connection for as long as a sender keeps reconnecting.
    max_connections: int = setting(4096, integer_in(16, 1 << 20))
    # The key of an operator's own usage tag (usagestatsd's `extra_tags`) whose value groups
    # the clusters on the fleet page: a Ray restart is a new session, the tag names the
    # cluster as the enterprise knows it.
    group_by_tag: str = setting("", _tag_key, env=("USAGESTATSD_COLLECTOR_GROUP_BY_TAG",))
    log_format: LogFormat = setting(
        "auto", Choice(LOG_FORMATS), env=("USAGESTATSD_COLLECTOR_LOG_FORMAT",), flag=Flag()
    )
    log_level: LogLevel = setting(
        "info", Choice(LOG_LEVELS), env=("USAGESTATSD_COLLECTOR_LOG_LEVEL",), flag=Flag()
    )
    # Not settings: the file read, and what systemd hands the process.
    settings_file: Path | None = None
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


DECLARED: tuple[Declaration, ...] = tuple(declarations(CollectorSettings))
SETTING_NAMES = tuple(d.name for d in DECLARED)


def read_settings_file(path: Path, explicit: bool) -> dict[str, Any]:
    """The TOML settings file; {} when the default file is absent."""
    table = read_toml_file(path, explicit) or {}
    for key in table:
        if key not in SETTING_NAMES:
            source = f"settings file {path}"
            raise SettingsError(key, source, table[key], "no such setting; see docs/collector.md")
    return table


def mask_dsn(text: str) -> str:
    """A database URL with its password (userinfo or `password=` parameter) withheld."""
    return _DSN_PASSWORD.sub(
        lambda m: (m.group(1) or m.group(2)) + "***" + ("@" if m.group(1) else ""), text
    )


def _masked(exc: SettingsError) -> SettingsError:
    """The same error, its value withheld when it may be a secret (a token, a password, or
    any value of an unknown key: a misspelt `ingest_token` is still a token)."""
    if exc.name == "database_url" and isinstance(exc.value, str):
        value: object = mask_dsn(exc.value)
    elif exc.name in SECRET_SETTINGS or exc.name not in (*SETTING_NAMES, "config"):
        value = MASKED
    else:
        return exc
    return SettingsError(exc.name, exc.source, value, exc.accepted)


def load_settings(
    env: Mapping[str, str], cli: Mapping[str, object] | None = None, path: Path | None = None
) -> CollectorSettings:
    """Build the settings from every layer; raises SettingsError on the first bad value,
    never quoting a secret."""
    try:
        return _load(env, cli, path)
    except SettingsError as exc:
        raise _masked(exc) from None


def _load(
    env: Mapping[str, str], cli: Mapping[str, object] | None, path: Path | None
) -> CollectorSettings:
    cli = cli or {}
    file_path = path or DEFAULT_SETTINGS_FILE
    file_values = read_settings_file(file_path, path is not None)
    layered = {k: v for k, v in cli.items() if k != "database_url_file"}
    got = gather(DECLARED, file_values, f"settings file {file_path}", env, layered)
    secrets = secret_values(
        env, str(cli["database_url_file"]) if cli.get("database_url_file") else None
    )
    for d in DECLARED:
        if d.name in secrets:
            text, source = secrets[d.name]
            got.take(d.name, text, source, d.text_parse)
    shared = set(got.values.get("ingest_tokens", ())) & set(got.values.get("deletion_tokens", ()))
    if shared:
        raise SettingsError(
            "deletion_tokens",
            "the settings",
            MASKED,
            "tokens that are not also ingest tokens (every head holds those)",
        )
    return CollectorSettings(
        settings_file=file_path if file_values else None,
        notify_socket=env.get("NOTIFY_SOCKET") or None,
        journal_stream=env.get("JOURNAL_STREAM") or None,
        **got.values,
    )


def database_problem(exc: Exception, settings: CollectorSettings) -> str:
    """The error's own text (the database server's, for PostgreSQL: a wrong password, an
    unknown role, a refused connection), on one line, never with the DSN's password."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    password = urlsplit(settings.database).password
    if password:
        text = text.replace(password, "***")
    return mask_dsn(text)[:500]
