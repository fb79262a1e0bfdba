"""One frozen Settings object: defaults < settings file < environment < command line.

Every setting is declared once, below, as a field of `Settings` (or of `RetryPolicy`):
default, settings-file key, environment variables, command-line flag, parser and doc
line (config/declare.py). Every value is validated here, once, and a bad one raises
`SettingsError` naming the setting, where the value came from, the value itself and what
is accepted. The caller (the CLI) turns that into exit status 78. No other module reads
the environment: what systemd hands the process and the raw consent inputs are read here
too, into their own small types.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from usagestatsd.config.declare import (
    Declaration,
    Env,
    Flag,
    SettingsError,
    declarations,
    flatten,
    gather,
    group,
    groups,
    read_toml_file,
    setting,
)
from usagestatsd.config.types import ConsentInputs, RetryPolicy, SystemdHandoff
from usagestatsd.config.values import (
    Choice,
    Endpoint,
    absolute_path,
    any_path,
    boolean,
    endpoint_list,
    endpoint_tables,
    expand_home,
    field_names,
    first_entry,
    integer_in,
    number_in,
    parse_dashboard_address,
    parse_intake,
    parse_url,
    ray_config_files,
    ray_tmpdir,
    redact_url,
    short_text,
    state_dir_default,
    user_id,
)
from usagestatsd.contract.fields import TAG_KEY_RE

__all__ = [
    "ConsentInputs",
    "Endpoint",
    "RetryPolicy",
    "SettingsError",
    "SystemdHandoff",
    "parse_dashboard_address",
    "parse_intake",
    "parse_url",
    "read_toml_file",
    "redact_url",
]

DEFAULT_SETTINGS_FILE = Path("/etc/usagestatsd/usagestatsd.toml")
DEFAULT_ENDPOINT_URL = "https://usage-stats.ray.io/"
MAX_INTERVAL_S = 7 * 24 * 3600.0
LogFormat = Literal["auto", "journal", "json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]
BesideRay = Literal["auto", "report"]
LOG_FORMATS: tuple[LogFormat, ...] = get_args(LogFormat)
LOG_LEVELS: tuple[LogLevel, ...] = get_args(LogLevel)
# An operator's tag value is one short token (a team code, a version, a flag): never free
# text, where a person's name could ride along. The privacy guard checks
# it again for addresses, host names and secrets.
TAG_VALUE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+-]{0,63}|")
MAX_TAG_VALUE_CHARS = 64


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


_ABSOLUTE = "absolute path"


@dataclass(frozen=True)
class Settings:
    """Everything the daemon was told, validated, with where each value came from.

    Each setting is declared once, here (settings_declare.setting), in the order they are
    layered: the first bad value reported is always the same one.
    """

    temp_root: Path = setting(
        Path("/tmp/ray"),
        absolute_path,
        env=(Env("RAY_TMPDIR", parse=ray_tmpdir, keep_empty=True), "USAGESTATSD_TEMP_ROOT"),
        flag=Flag(metavar="DIR", help="Ray's temp root", show_default=True),
        doc=_ABSOLUTE,
    )
    # The uid Ray runs as, besides root and this daemon's own user (docs/security.md).
    ray_user: int | None = setting(
        None,
        user_id,
        env=("USAGESTATSD_RAY_USER",),
        doc="user name or uid that runs Ray (not `nobody`)",
    )
    state_dir: Path = setting(
        Path("/var/lib/usagestatsd"),
        absolute_path,
        env=(Env("STATE_DIRECTORY", pick=first_entry), "USAGESTATSD_STATE_DIR"),
        flag=Flag(metavar="DIR", help="where counters are kept"),
        doc=_ABSOLUTE,
        doc_default="`/var/lib/usagestatsd` (root), else `$XDG_STATE_HOME/usagestatsd`",
        default_from=state_dir_default,
    )
    # Where the service publishes status.json for every local user (store/published.py): the
    # same for every user by default, so that a command finds the service's facts.
    runtime_dir: Path = setting(
        Path("/run/usagestatsd"),
        absolute_path,
        env=("USAGESTATSD_RUNTIME_DIR",),
        doc=_ABSOLUTE,
    )
    endpoints: tuple[Endpoint, ...] = setting(
        (Endpoint(DEFAULT_ENDPOINT_URL),),
        endpoint_tables,
        env=("RAY_USAGE_STATS_REPORT_URL", "USAGESTATSD_ENDPOINTS"),
        text_parse=endpoint_list,
        flag=Flag(
            "--endpoint",
            metavar="URL",
            help="report here instead of the configured endpoints (repeatable)",
            run_only=True,
            repeat=True,
        ),
        doc="`https://` anywhere, `http://` only to 127.0.0.1, ::1, localhost",
        doc_default=f"`{DEFAULT_ENDPOINT_URL}`",
    )
    report_interval_s: float = setting(
        3600.0,
        number_in(0.05, MAX_INTERVAL_S, "seconds"),
        env=("RAY_USAGE_STATS_REPORT_INTERVAL_S", "USAGESTATSD_REPORT_INTERVAL_S"),
        flag=Flag("--interval", metavar="SECONDS", help="seconds between reports", run_only=True),
        doc=f"0.05 to {MAX_INTERVAL_S:g} seconds",
    )
    extra_tags: Mapping[str, str] = setting(
        {},
        parse_extra_tags,
        env=(Env("RAY_USAGE_STATS_EXTRA_TAGS", keep_empty=True),),
        doc="keys `[A-Za-z0-9_.-]{1,64}`",
        factory=dict,
    )
    source: str = setting(
        "OSS",
        short_text(64),
        env=("RAY_USAGE_STATS_SOURCE", "USAGESTATSD_SOURCE"),
        doc="1 to 64 printable characters",
    )
    cluster_config: Path | None = setting(
        None,
        absolute_path,
        env=("USAGESTATSD_CLUSTER_CONFIG",),
        doc=_ABSOLUTE,
        doc_default="`~/ray_bootstrap_config.yaml` of the session's owner",
    )
    kuberay_in_use: bool = setting(
        False,
        boolean,
        env=("RAY_USAGE_STATS_KUBERAY_IN_USE",),
        file=False,
        doc='boolean: `cloud_provider = "kuberay"`',
        doc_default="off",
    )
    socket_timeout_s: float = setting(
        5.0,
        number_in(0.01, 300, "seconds"),
        env=("USAGESTATSD_SOCKET_TIMEOUT_S",),
        doc="seconds, per dashboard request",
    )
    socket_max_bytes: int = setting(
        32 << 20,
        integer_in(1024, 1 << 30),
        env=("USAGESTATSD_SOCKET_MAX_BYTES",),
        doc="bytes read from one socket reply at most",
    )
    dashboard_address: tuple[str, int] | None = setting(
        None,
        parse_dashboard_address,
        env=("USAGESTATSD_DASHBOARD_ADDRESS",),
        doc="`HOST:PORT` of Ray's dashboard",
        doc_default="found from Ray",
    )
    http_timeout_s: float = setting(
        10.0,
        number_in(0.01, 300, "seconds"),
        env=("USAGESTATSD_HTTP_TIMEOUT_S",),
        doc="seconds per POST (Ray's timeout)",
    )
    retry: RetryPolicy = group(RetryPolicy)
    log_format: LogFormat = setting(
        "auto", Choice(LOG_FORMATS), env=("USAGESTATSD_LOG_FORMAT",), flag=Flag()
    )
    log_level: LogLevel = setting(
        "info", Choice(LOG_LEVELS), env=("USAGESTATSD_LOG_LEVEL",), flag=Flag()
    )
    disable_usage_stats: bool = setting(
        False,
        boolean,
        flag=Flag(switch=True, run_only=True, help="collect and send nothing; log why and exit 0"),
        doc="boolean (see consent.md)",
    )
    ray_intake: tuple[str, int] | None = setting(
        ("127.0.0.1", 18922),
        parse_intake,
        env=("USAGESTATSD_RAY_INTAKE",),
        doc="`off`, or a loopback `HOST:PORT`",
    )
    beside_ray: BesideRay = setting(
        "auto",
        Choice(get_args(BesideRay)),
        env=("USAGESTATSD_BESIDE_RAY",),
        doc="`auto` (stand down when Ray's reporter sends itself), `report`",
    )
    redact: tuple[str, ...] = setting(
        (), field_names, env=("USAGESTATSD_REDACT",), doc="report fields always sent as null"
    )
    accept_fields_version: int | None = setting(
        None, integer_in(1, 1000), doc="field-set version accepted for a fleet"
    )
    history_max_bytes: int = setting(
        10 << 20,
        integer_in(4096, 1 << 34),
        env=("USAGESTATSD_HISTORY_MAX_BYTES",),
        file_key="history.max_bytes",
        doc="4 KiB and up",
    )
    history_max_age_days: float = setting(
        90.0,
        number_in(0.001, 36500, "days"),
        env=("USAGESTATSD_HISTORY_MAX_AGE_DAYS",),
        file_key="history.max_age_days",
        doc="days",
    )
    consent_file: Path = setting(
        Path("~/.ray/config.json"),
        any_path,
        env=("RAY_USAGE_STATS_CONFIG_PATH",),
        doc="path",
        finish=expand_home,
    )
    # Ray's own config files consulted beside consent_file; None: ~/.ray/config.json of
    # root, of the daemon's user and of the Ray temp root's owner (consent.ray_config_files).
    ray_config_files: tuple[Path, ...] | None = setting(
        None,
        ray_config_files,
        env=("USAGESTATSD_RAY_CONFIG_FILES",),
        doc="`auto`, or a list of absolute paths",
        doc_default="`auto`",
    )
    # Not settings: what else the environment says, and where each setting came from.
    settings_file: Path | None = None
    http_max_response_bytes: int = 64 << 10  # a fixed cap on a reply body read
    kubernetes_in_use: bool = False  # $KUBERNETES_SERVICE_HOST is set
    consent_inputs: ConsentInputs = ConsentInputs()
    systemd: SystemdHandoff = SystemdHandoff()
    sources: Mapping[str, str] = field(default_factory=dict)  # shown: where each came from
    set_by_flag: frozenset[str] = frozenset()  # decides: the settings a command-line flag set

    def source_of(self, name: str) -> str:
        """Where a setting's value came from ('default' when nobody set it)."""
        return self.sources.get(name, "default")

    def was_set(self, name: str) -> bool:
        """Whether anyone set this setting (a file, the environment or a flag)."""
        return name in self.sources

    # The systemd hand-off under the names the daemon has always read them by.
    @property
    def notify_socket(self) -> str | None:
        """$NOTIFY_SOCKET (SystemdHandoff)."""
        return self.systemd.notify_socket

    @property
    def watchdog_usec(self) -> int | None:
        """$WATCHDOG_USEC (SystemdHandoff)."""
        return self.systemd.watchdog_usec

    @property
    def watchdog_pid(self) -> int | None:
        """$WATCHDOG_PID (SystemdHandoff)."""
        return self.systemd.watchdog_pid

    @property
    def journal_stream(self) -> str | None:
        """$JOURNAL_STREAM (SystemdHandoff)."""
        return self.systemd.journal_stream


DECLARED: tuple[Declaration, ...] = tuple(declarations(Settings))
_GROUPS = groups(Settings)
# File tables that are one setting's value (extra_tags), not a section of settings.
_TABLE_VALUES = frozenset(
    d.file_key for d in DECLARED if isinstance(d.default, Mapping) and d.file_key
)


def read_settings_file(path: Path, explicit: bool) -> dict[str, Any] | None:
    """The settings file as flat keys; None when the default file is simply absent."""
    table = read_toml_file(path, explicit)
    if table is None:
        return None
    flat = flatten(table, _TABLE_VALUES)
    keys = {d.file_key for d in DECLARED}
    for key in flat:
        if key not in keys:
            raise SettingsError(
                key,
                f"settings file {path}",
                flat[key],
                "no such setting; see usagestatsd.toml(5) for the names",
            )
    return flat


def load_settings(
    env: Mapping[str, str],
    cli: Mapping[str, object] | None = None,
    settings_file: Path | None = None,
    euid: int | None = None,
) -> Settings:
    """Build the one Settings from all layers; raises SettingsError on the first bad value."""
    explicit = settings_file is not None
    path = settings_file or DEFAULT_SETTINGS_FILE
    file_values = read_settings_file(path, explicit) or {}
    got = gather(DECLARED, file_values, f"settings file {path}", env, cli or {})
    uid = os.geteuid() if euid is None else euid
    values: dict[str, Any] = {}
    for d in DECLARED:
        if d.name in got.values:  # set, perhaps to None ("off", "auto")
            value = got.values[d.name]
        else:
            value = d.default_from(env, uid) if d.default_from else None
            if value is None and d.finish is None:
                continue  # the field's own default (a fresh one)
            value = d.default if value is None else value
        values[d.name] = d.finish(value, env) if d.finish else value
    for name, cls in _GROUPS.items():
        prefix = name + "."
        members = {k: values.pop(k) for k in list(values) if k.startswith(prefix)}
        values[name] = cls(**{k.removeprefix(prefix): v for k, v in members.items()})
    return Settings(
        settings_file=path if (explicit or file_values or path.exists()) else None,
        kubernetes_in_use=bool(env.get("KUBERNETES_SERVICE_HOST")),
        consent_inputs=ConsentInputs.from_env(env),
        systemd=SystemdHandoff.from_env(env),
        sources=got.sources,
        set_by_flag=frozenset(got.command_line),
        **values,
    )


def setting_flags() -> dict[str, str]:
    """Setting name -> the command-line flag that sets it, for the settings that have one."""
    return {d.name: d.flag_name for d in DECLARED if d.flag_name}


# Read by load_settings beside the declarations, for defaults: the homes.
_HOME_VARIABLES = ("HOME", "XDG_STATE_HOME")


def read_variables() -> frozenset[str]:
    """Every environment variable a setting or the consent decision is read from."""
    declared = (var.name for d in DECLARED for var in d.env)
    return frozenset([*declared, *ConsentInputs.VARIABLES, *_HOME_VARIABLES])
