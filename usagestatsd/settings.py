"""One frozen Settings object: defaults < settings file < environment < command line.

Every value is validated here, once, and a bad one raises `SettingsError` naming the
setting, where the value came from, the value itself and what is accepted. The caller
(the CLI) turns that into exit status 78. No other module reads the environment.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import re
import stat
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from usagestatsd.fields import TAG_KEY_RE
from usagestatsd.fieldsets import redactable

DEFAULT_SETTINGS_FILE = Path("/etc/usagestatsd/usagestatsd.toml")
DEFAULT_ENDPOINT_URL = "https://usage-stats.ray.io/"
MAX_SETTINGS_FILE_BYTES = 1 << 20
MAX_INTERVAL_S = 7 * 24 * 3600.0
LOG_FORMATS = ("auto", "journal", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")
# An operator's tag value is one short token (a team code, a version, a flag): never free
# text, where a person's name could ride along (issue 12 row 14). The privacy guard checks
# it again for addresses, host names and secrets.
TAG_VALUE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+-]{0,63}|")
MAX_TAG_VALUE_CHARS = 64


class SettingsError(Exception):
    """A setting has a value that is not accepted; the message says all an operator needs."""

    def __init__(self, name: str, source: str, value: object, accepted: str) -> None:
        self.name = name
        self.source = source
        self.value = value
        self.accepted = accepted
        shown = value if isinstance(value, str) else repr(value)
        if isinstance(shown, str) and len(shown) > 200:
            shown = shown[:200] + "..."
        super().__init__(
            f"invalid setting {name} from {source}: {shown!r} is not accepted; expected {accepted}"
        )


@dataclass(frozen=True)
class Endpoint:
    """Where reports are POSTed, with the TLS and proxy settings for that place."""

    url: str
    ca_bundle: Path | None = None
    proxy: str | None = None
    deletion_url: str | None = None

    @property
    def display(self) -> str:
        """The URL without credentials or query, safe to log."""
        return redact_url(self.url)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one report is pushed to one endpoint before it counts as failed."""

    max_attempts: int = 5
    initial_delay_s: float = 2.0
    max_delay_s: float = 60.0
    budget_s: float = 300.0

    def budget_for(self, interval_s: float) -> float:
        """Total retry time, kept well under the report interval (a quarter of it at most)."""
        return min(self.budget_s, interval_s / 4)


@dataclass(frozen=True)
class Settings:
    """Everything the daemon was told, validated, with where each value came from."""

    settings_file: Path | None = None
    temp_root: Path = Path("/tmp/ray")
    # The uid Ray runs as, besides root and this daemon's own user (docs/security.md).
    ray_user: int | None = None
    state_dir: Path = Path("/var/lib/usagestatsd")
    endpoints: tuple[Endpoint, ...] = (Endpoint(DEFAULT_ENDPOINT_URL),)
    report_interval_s: float = 3600.0
    extra_tags: Mapping[str, str] = field(default_factory=dict)
    source: str = "OSS"
    cluster_config: Path | None = None
    kuberay_in_use: bool = False
    kubernetes_in_use: bool = False
    socket_timeout_s: float = 5.0
    socket_max_bytes: int = 32 << 20
    dashboard_address: tuple[str, int] | None = None
    http_timeout_s: float = 10.0
    http_max_response_bytes: int = 64 << 10
    retry: RetryPolicy = RetryPolicy()
    log_format: str = "auto"
    log_level: str = "info"
    ray_intake: tuple[str, int] | None = ("127.0.0.1", 18922)
    beside_ray: str = "auto"
    redact: tuple[str, ...] = ()
    accept_fields_version: int | None = None
    history_max_bytes: int = 10 << 20
    history_max_age_days: float = 90.0
    # Consent inputs are kept raw: consent.py decides, and a bad value there disables
    # collection instead of stopping start-up.
    disable_usage_stats: bool = False
    usage_stats_enabled_env: str | None = None
    do_not_track_env: str | None = None
    consent_file: Path = Path("~/.ray/config.json")
    # Ray's own config files consulted beside consent_file; None: ~/.ray/config.json of
    # root, of the daemon's user and of the Ray temp root's owner (consent.ray_config_files).
    ray_config_files: tuple[Path, ...] | None = None
    prompt_enabled_env: str | None = None
    # What systemd hands the process.
    notify_socket: str | None = None
    watchdog_usec: int | None = None
    watchdog_pid: int | None = None
    journal_stream: str | None = None
    sources: Mapping[str, str] = field(default_factory=dict)

    def source_of(self, name: str) -> str:
        """Where a setting's value came from ('default' when nobody set it)."""
        return self.sources.get(name, "default")


# ---------------------------------------------------------------------------
# Value parsers: each takes a raw value (a TOML value or a string) and returns the
# typed value or raises ValueError whose text says what is accepted.


def _number(low: float, high: float, unit: str) -> Callable[[object], float]:
    accepted = f"a number of {unit} from {low:g} to {high:g}"

    def parse(raw: object) -> float:
        if isinstance(raw, bool):
            raise ValueError(accepted)
        try:
            value = float(raw) if isinstance(raw, (int, float, str)) else float("nan")
        except ValueError:
            raise ValueError(accepted) from None
        if not low <= value <= high:  # also rejects NaN
            raise ValueError(accepted)
        return value

    return parse


def _integer(low: int, high: int) -> Callable[[object], int]:
    accepted = f"a whole number from {low} to {high}"

    def parse(raw: object) -> int:
        if isinstance(raw, bool):
            raise ValueError(accepted)
        try:
            value = int(raw) if isinstance(raw, (int, str)) else None
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise ValueError(accepted)
        return value

    return parse


def _choice(choices: Sequence[str]) -> Callable[[object], str]:
    accepted = "one of " + ", ".join(choices)

    def parse(raw: object) -> str:
        if not isinstance(raw, str) or raw.strip().lower() not in choices:
            raise ValueError(accepted)
        return raw.strip().lower()

    return parse


def _boolean(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(raw, str) and raw.strip().lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("true or false (1/0, yes/no)")


def _path(raw: object) -> Path:
    if not isinstance(raw, str) or not raw.strip() or "\0" in raw:
        raise ValueError("a file system path")
    return Path(raw.strip())


def _absolute_path(raw: object) -> Path:
    path = _path(raw)
    if not path.is_absolute():
        raise ValueError("an absolute file system path")
    return path


_OVERFLOW_UID = 65534  # nobody; also how a user namespace shows every unmapped uid


def _user(raw: object) -> int:
    """A user name known to this system, or a uid: resolved once, at start."""
    accepted = "a user name known to this system, or a uid from 0 to 4294967294, not nobody"
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        raise ValueError(accepted)
    text = str(raw).strip()
    if text.isascii() and text.isdigit():
        uid = int(text)
        if uid > 4294967294:
            raise ValueError(accepted)
    else:
        try:
            uid = pwd.getpwnam(text).pw_uid
        except (KeyError, ValueError):
            raise ValueError(f"{accepted} (no user {text!r} here)") from None
    if uid == _OVERFLOW_UID:
        # Under the unit's PrivateUsers=yes every other user's uid reads as 65534:
        # trusting it would trust them all.
        raise ValueError(accepted)
    return uid


def _text(max_chars: int) -> Callable[[object], str]:
    accepted = f"text of 1 to {max_chars} printable characters"

    def parse(raw: object) -> str:
        if not isinstance(raw, str) or not 0 < len(raw) <= max_chars or not raw.isprintable():
            raise ValueError(accepted)
        return raw

    return parse


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redact_url(url: str) -> str:
    """Scheme, host, port and path of a URL: what may be logged of it."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid url>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{parts.path or '/'}"


def parse_url(raw: object) -> str:
    """An endpoint URL: https anywhere, plain http only to this machine's loopback."""
    accepted = "an https:// URL (http:// only for 127.0.0.1, ::1 or localhost)"
    if not isinstance(raw, str) or not raw.isprintable() or len(raw) > 2048:
        raise ValueError(accepted)
    try:
        parts = urlsplit(raw.strip())
        host = parts.hostname
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError:
        raise ValueError(accepted) from None
    if not host or parts.scheme not in ("http", "https"):
        raise ValueError(accepted)
    if parts.scheme == "http" and not _is_loopback(host):
        raise ValueError(accepted)
    return raw.strip()


def _endpoint_list_from_strings(raw: object) -> tuple[Endpoint, ...]:
    if not isinstance(raw, str):
        raise ValueError("one or more URLs separated by spaces or commas")
    urls = [u for u in re.split(r"[\s,]+", raw.strip()) if u]
    if not urls:
        raise ValueError("one or more URLs separated by spaces or commas")
    return tuple(Endpoint(parse_url(u)) for u in urls)


def _endpoint_tables(raw: object) -> tuple[Endpoint, ...]:
    accepted = (
        "a list of [[endpoints]] tables, each with url and optional ca_bundle, proxy, deletion_url"
    )
    if not isinstance(raw, list) or not raw:
        raise ValueError(accepted)
    endpoints = []
    for table in raw:
        if not isinstance(table, dict) or "url" not in table:
            raise ValueError(accepted)
        unknown = set(table) - {"url", "ca_bundle", "proxy", "deletion_url"}
        if unknown:
            raise ValueError(f"{accepted} (unknown key {sorted(unknown)[0]!r})")
        endpoints.append(
            Endpoint(
                url=parse_url(table["url"]),
                ca_bundle=_absolute_path(table["ca_bundle"]) if "ca_bundle" in table else None,
                proxy=_proxy(table["proxy"]) if "proxy" in table else None,
                deletion_url=parse_url(table["deletion_url"]) if "deletion_url" in table else None,
            )
        )
    return tuple(endpoints)


def _proxy(raw: object) -> str:
    accepted = "an http:// or https:// proxy URL"
    if not isinstance(raw, str):
        raise ValueError(accepted)
    try:
        parts = urlsplit(raw)
    except ValueError:
        raise ValueError(accepted) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(accepted)
    return raw


def parse_intake(raw: object) -> tuple[str, int] | None:
    """`host:port` on this machine's loopback for Ray's reporter, or 'off'."""
    accepted = "'off' or HOST:PORT with a loopback host (127.0.0.1, [::1], localhost)"
    if not isinstance(raw, str):
        raise ValueError(accepted)
    text = raw.strip()
    if text.lower() in ("off", "none", "no", "false", ""):
        return None
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(accepted)
    if not _is_loopback(host):
        raise ValueError(accepted)
    return host, int(port_text)


def parse_dashboard_address(raw: object) -> tuple[str, int]:
    """Where Ray's dashboard listens (`ray start --dashboard-host/--dashboard-port`)."""
    accepted = "HOST:PORT with an IP address or localhost as HOST (e.g. 127.0.0.1:8265)"
    if not isinstance(raw, str):
        raise ValueError(accepted)
    host, sep, port_text = raw.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(accepted)
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(accepted) from None
    return host, int(port_text)


def _field_names(raw: object) -> tuple[str, ...]:
    accepted = "a list of report field names (not schema_version, session_id or the counters)"
    items = [p for p in re.split(r"[\s,]+", raw.strip()) if p] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ValueError(accepted)
    for name in items:
        if not redactable(name):
            raise ValueError(f"{accepted} ({name!r} is not one)")
    return tuple(dict.fromkeys(items))


def _ray_config_files(raw: object) -> tuple[Path, ...] | None:
    accepted = "'auto', or a list of absolute paths of Ray config files (~/.ray/config.json)"
    if isinstance(raw, str) and raw.strip().lower() == "auto":
        return None
    items = [p for p in re.split(r"[\s,]+", raw.strip()) if p] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ValueError(accepted)
    paths = tuple(Path(i) for i in items)
    if not all(p.is_absolute() for p in paths):
        raise ValueError(accepted)
    return tuple(dict.fromkeys(paths))


def parse_extra_tags(raw: object) -> dict[str, str]:
    """Ray's ``k=v;k2=v2`` form (or a TOML table); a bad pair is named, not silently dropped."""
    accepted = (
        f"'key=value' pairs separated by ';', keys of 1-64 letters, digits, '_', '.', '-', "
        f"values of at most {MAX_TAG_VALUE_CHARS} letters, digits, '_', '.', ':', '+', '-' "
        "(no spaces)"
    )
    if isinstance(raw, dict):
        pairs = [(str(k), v) for k, v in raw.items()]
    elif isinstance(raw, str):
        pairs = []
        for piece in raw.split(";"):
            if not piece.strip():
                continue
            if "=" not in piece:
                raise ValueError(f"{accepted} (no '=' in {piece!r})")
            key, _, value = piece.partition("=")
            pairs.append((key.strip(), value.strip()))
    else:
        raise ValueError(accepted)
    tags: dict[str, str] = {}
    for key, value in pairs:
        if not TAG_KEY_RE.fullmatch(key):
            raise ValueError(f"{accepted} (bad key {key!r})")
        if not isinstance(value, str) or not TAG_VALUE_RE.fullmatch(value):
            raise ValueError(f"{accepted} (bad value for {key!r})")
        tags[key] = value
    return tags


# ---------------------------------------------------------------------------
# The table of settings: name, settings-file key, environment variables (later ones
# win), the parser, and the command-line flag that sets it, if any (cli.py defines the
# flags; errors name the flag as the operator typed it, and a test checks they agree).


@dataclass(frozen=True)
class _Spec:
    name: str
    file_key: str | None
    env: tuple[str, ...]
    parse: Callable[[object], Any]
    env_parse: Callable[[object], Any] | None = None
    flag: str | None = None


def _ray_tmpdir(raw: object) -> Path:
    # Ray puts its temp root at $RAY_TMPDIR/ray.
    return _absolute_path(raw) / "ray"


_SPECS: tuple[_Spec, ...] = (
    _Spec("temp_root", "temp_root", ("USAGESTATSD_TEMP_ROOT",), _absolute_path, flag="--temp-root"),
    _Spec("ray_user", "ray_user", ("USAGESTATSD_RAY_USER",), _user),
    _Spec(
        "state_dir",
        "state_dir",
        ("STATE_DIRECTORY", "USAGESTATSD_STATE_DIR"),
        _absolute_path,
        flag="--state-dir",
    ),
    _Spec(
        "endpoints",
        "endpoints",
        ("RAY_USAGE_STATS_REPORT_URL", "USAGESTATSD_ENDPOINTS"),
        _endpoint_tables,
        _endpoint_list_from_strings,
        flag="--endpoint",
    ),
    _Spec(
        "report_interval_s",
        "report_interval_s",
        ("RAY_USAGE_STATS_REPORT_INTERVAL_S", "USAGESTATSD_REPORT_INTERVAL_S"),
        _number(0.05, MAX_INTERVAL_S, "seconds"),
        flag="--interval",
    ),
    _Spec("extra_tags", "extra_tags", ("RAY_USAGE_STATS_EXTRA_TAGS",), parse_extra_tags),
    _Spec(
        "source",
        "source",
        ("RAY_USAGE_STATS_SOURCE", "USAGESTATSD_SOURCE"),
        _text(64),
    ),
    _Spec("cluster_config", "cluster_config", ("USAGESTATSD_CLUSTER_CONFIG",), _absolute_path),
    _Spec("kuberay_in_use", None, ("RAY_USAGE_STATS_KUBERAY_IN_USE",), _boolean),
    _Spec(
        "socket_timeout_s",
        "socket_timeout_s",
        ("USAGESTATSD_SOCKET_TIMEOUT_S",),
        _number(0.01, 300, "seconds"),
    ),
    _Spec(
        "socket_max_bytes",
        "socket_max_bytes",
        ("USAGESTATSD_SOCKET_MAX_BYTES",),
        _integer(1024, 1 << 30),
    ),
    _Spec(
        "dashboard_address",
        "dashboard_address",
        ("USAGESTATSD_DASHBOARD_ADDRESS",),
        parse_dashboard_address,
    ),
    _Spec(
        "http_timeout_s",
        "http_timeout_s",
        ("USAGESTATSD_HTTP_TIMEOUT_S",),
        _number(0.01, 300, "seconds"),
    ),
    _Spec(
        "retry.max_attempts",
        "retry.max_attempts",
        ("USAGESTATSD_RETRY_MAX_ATTEMPTS",),
        _integer(1, 20),
    ),
    _Spec(
        "retry.initial_delay_s",
        "retry.initial_delay_s",
        ("USAGESTATSD_RETRY_INITIAL_DELAY_S",),
        _number(0.001, 3600, "seconds"),
    ),
    _Spec(
        "retry.max_delay_s",
        "retry.max_delay_s",
        ("USAGESTATSD_RETRY_MAX_DELAY_S",),
        _number(0.001, 3600, "seconds"),
    ),
    _Spec(
        "retry.budget_s",
        "retry.budget_s",
        ("USAGESTATSD_RETRY_BUDGET_S",),
        _number(0.01, 86400, "seconds"),
    ),
    _Spec(
        "log_format",
        "log_format",
        ("USAGESTATSD_LOG_FORMAT",),
        _choice(LOG_FORMATS),
        flag="--log-format",
    ),
    _Spec(
        "log_level",
        "log_level",
        ("USAGESTATSD_LOG_LEVEL",),
        _choice(LOG_LEVELS),
        flag="--log-level",
    ),
    _Spec(
        "disable_usage_stats",
        "disable_usage_stats",
        (),
        _boolean,
        flag="--disable-usage-stats",
    ),
    _Spec("ray_intake", "ray_intake", ("USAGESTATSD_RAY_INTAKE",), parse_intake),
    _Spec("beside_ray", "beside_ray", ("USAGESTATSD_BESIDE_RAY",), _choice(("auto", "report"))),
    _Spec("redact", "redact", ("USAGESTATSD_REDACT",), _field_names),
    _Spec("accept_fields_version", "accept_fields_version", (), _integer(1, 1000)),
    _Spec(
        "history_max_bytes",
        "history.max_bytes",
        ("USAGESTATSD_HISTORY_MAX_BYTES",),
        _integer(4096, 1 << 34),
    ),
    _Spec(
        "history_max_age_days",
        "history.max_age_days",
        ("USAGESTATSD_HISTORY_MAX_AGE_DAYS",),
        _number(0.001, 36500, "days"),
    ),
    _Spec("consent_file", "consent_file", ("RAY_USAGE_STATS_CONFIG_PATH",), _path),
    _Spec(
        "ray_config_files",
        "ray_config_files",
        ("USAGESTATSD_RAY_CONFIG_FILES",),
        _ray_config_files,
    ),
)
_SPEC_BY_NAME = {spec.name: spec for spec in _SPECS}
_FILE_KEYS = {spec.file_key for spec in _SPECS if spec.file_key}


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name not in ("extra_tags",):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def read_toml_file(path: Path, explicit: bool) -> dict[str, Any] | None:
    """A settings file's TOML table; None when a default (not `explicit`) file is absent.

    Shared by the daemon's and the collector's settings: at most 1 MiB, a regular file
    only, UTF-8 TOML; every problem is one SettingsError naming the file.
    """
    source = f"settings file {path}"
    if str(path) == os.devnull:
        return {}  # `--config /dev/null`: deliberately no settings file
    try:
        # O_NONBLOCK: a FIFO (or a device) at the path must be refused, not block start-up.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise SettingsError("config", source, f"{path} is not a regular file", "a file")
            data = handle.read(MAX_SETTINGS_FILE_BYTES + 1)
    except FileNotFoundError:
        if explicit:
            raise SettingsError(
                "config", "the command line", str(path), "an existing file"
            ) from None
        return None
    except OSError as exc:
        raise SettingsError("config", source, exc.strerror or str(exc), "a readable file") from None
    if len(data) > MAX_SETTINGS_FILE_BYTES:
        raise SettingsError("config", source, f"{path} is larger than 1 MiB", "a file under 1 MiB")
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError("config", source, str(exc), "valid UTF-8 TOML") from None


def read_settings_file(path: Path, explicit: bool) -> dict[str, Any] | None:
    """The settings file as flat keys; None when the default file is simply absent."""
    table = read_toml_file(path, explicit)
    if table is None:
        return None
    flat = _flatten(table)
    for key in flat:
        if key not in _FILE_KEYS:
            raise SettingsError(
                key,
                f"settings file {path}",
                flat[key],
                "no such setting; see usagestatsd.toml(5) for the names",
            )
    return flat


def _default_state_dir(env: Mapping[str, str], euid: int) -> Path:
    if euid == 0:
        return Path("/var/lib/usagestatsd")
    base = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME", "/")) / ".local" / "state")
    return Path(base) / "usagestatsd"


def _expand_home(path: Path, env: Mapping[str, str]) -> Path:
    text = str(path)
    if text == "~" or text.startswith("~/"):
        home = env.get("HOME") or os.path.expanduser("~")
        return Path(home + text[1:])
    return path


def load_settings(
    env: Mapping[str, str],
    cli: Mapping[str, object] | None = None,
    settings_file: Path | None = None,
    euid: int | None = None,
) -> Settings:
    """Build the one Settings from all layers; raises SettingsError on the first bad value."""
    cli = dict(cli or {})
    explicit = settings_file is not None
    path = settings_file or DEFAULT_SETTINGS_FILE
    file_values = read_settings_file(path, explicit) or {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def take(name: str, raw: object, source: str, parse: Callable[[object], Any]) -> None:
        try:
            values[name] = parse(raw)
        except ValueError as exc:
            raise SettingsError(name, source, raw, str(exc)) from None
        sources[name] = source

    for spec in _SPECS:
        if spec.file_key and spec.file_key in file_values:
            take(spec.name, file_values[spec.file_key], f"settings file {path}", spec.parse)
        if spec.name == "temp_root" and "RAY_TMPDIR" in env:
            take(spec.name, env["RAY_TMPDIR"], "environment variable RAY_TMPDIR", _ray_tmpdir)
        for var in spec.env:
            if var in env and (env[var] != "" or spec.name == "extra_tags"):
                raw: object = env[var].split(":")[0] if var == "STATE_DIRECTORY" else env[var]
                take(spec.name, raw, f"environment variable {var}", spec.env_parse or spec.parse)
        if spec.name in cli and cli[spec.name] is not None:
            flag = spec.flag or spec.name  # every setting cli.py passes declares its flag
            take(spec.name, cli[spec.name], f"command line {flag}", spec.env_parse or spec.parse)

    uid = os.geteuid() if euid is None else euid
    retry = RetryPolicy(
        max_attempts=values.pop("retry.max_attempts", RetryPolicy.max_attempts),
        initial_delay_s=values.pop("retry.initial_delay_s", RetryPolicy.initial_delay_s),
        max_delay_s=values.pop("retry.max_delay_s", RetryPolicy.max_delay_s),
        budget_s=values.pop("retry.budget_s", RetryPolicy.budget_s),
    )
    values.setdefault("state_dir", _default_state_dir(env, uid))
    consent_file = _expand_home(values.pop("consent_file", Path("~/.ray/config.json")), env)
    return Settings(
        settings_file=path if (explicit or file_values or path.exists()) else None,
        retry=retry,
        consent_file=consent_file,
        usage_stats_enabled_env=env.get("RAY_USAGE_STATS_ENABLED"),
        do_not_track_env=env.get("DO_NOT_TRACK"),
        prompt_enabled_env=env.get("RAY_USAGE_STATS_PROMPT_ENABLED"),
        notify_socket=env.get("NOTIFY_SOCKET") or None,
        watchdog_usec=_watchdog_usec(env),
        watchdog_pid=_optional_int(env.get("WATCHDOG_PID")),
        journal_stream=env.get("JOURNAL_STREAM") or None,
        kubernetes_in_use=bool(env.get("KUBERNETES_SERVICE_HOST")),
        sources=sources,
        **values,
    )


def _optional_int(raw: str | None) -> int | None:
    try:
        return int(raw) if raw else None
    except ValueError:
        return None


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    usec = _optional_int(env.get("WATCHDOG_USEC"))
    return usec if usec and usec > 0 else None


def setting_names() -> list[str]:
    """Every setting name, for documentation and tests."""
    return [spec.name for spec in _SPECS]


def setting_flags() -> dict[str, str]:
    """Setting name -> the command-line flag that sets it, for the settings that have one."""
    return {spec.name: spec.flag for spec in _SPECS if spec.flag}


# Read by load_settings beside the table: the consent inputs, Ray's temp dir, the homes.
_OTHER_VARIABLES = (
    "RAY_TMPDIR",
    "RAY_USAGE_STATS_ENABLED",
    "DO_NOT_TRACK",
    "RAY_USAGE_STATS_PROMPT_ENABLED",
    "HOME",
    "XDG_STATE_HOME",
)


def read_variables() -> frozenset[str]:
    """Every environment variable a setting or the consent decision is read from."""
    return frozenset(var for spec in _SPECS for var in spec.env) | frozenset(_OTHER_VARIABLES)
