"""The value parsers of the settings, and the Endpoint type they build.

Each parser takes a raw value (a TOML value or a string from the environment or the
command line) and returns the typed value, or raises ValueError whose text says what is
accepted: config/declare.py turns that into the SettingsError an operator reads.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from usagestatsd.contract.fieldsets import redactable


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


def number_in(low: float, high: float, unit: str) -> Callable[[object], float]:
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


def integer_in(low: int, high: int) -> Callable[[object], int]:
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


class Choice:
    """One of a fixed list of words (any case, surrounding blanks ignored)."""

    def __init__(self, choices: Sequence[str]) -> None:
        self.choices = tuple(choices)
        self.accepted = "one of " + ", ".join(self.choices)

    def __call__(self, raw: object) -> str:
        if not isinstance(raw, str) or raw.strip().lower() not in self.choices:
            raise ValueError(self.accepted)
        return raw.strip().lower()


def boolean(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(raw, str) and raw.strip().lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("true or false (1/0, yes/no)")


def any_path(raw: object) -> Path:
    if not isinstance(raw, str) or not raw.strip() or "\0" in raw:
        raise ValueError("a file system path")
    return Path(raw.strip())


def absolute_path(raw: object) -> Path:
    path = any_path(raw)
    if not path.is_absolute():
        raise ValueError("an absolute file system path")
    return path


_OVERFLOW_UID = 65534  # nobody; also how a user namespace shows every unmapped uid


def user_id(raw: object) -> int:
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


def short_text(max_chars: int) -> Callable[[object], str]:
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


def endpoint_list(raw: object) -> tuple[Endpoint, ...]:
    if not isinstance(raw, str):
        raise ValueError("one or more URLs separated by spaces or commas")
    urls = [u for u in re.split(r"[\s,]+", raw.strip()) if u]
    if not urls:
        raise ValueError("one or more URLs separated by spaces or commas")
    return tuple(Endpoint(parse_url(u)) for u in urls)


def endpoint_tables(raw: object) -> tuple[Endpoint, ...]:
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
                ca_bundle=absolute_path(table["ca_bundle"]) if "ca_bundle" in table else None,
                proxy=proxy_url(table["proxy"]) if "proxy" in table else None,
                deletion_url=parse_url(table["deletion_url"]) if "deletion_url" in table else None,
            )
        )
    return tuple(endpoints)


def proxy_url(raw: object) -> str:
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


def split_host_port(raw: object, accepted: str, lowest_port: int = 0) -> tuple[str, int]:
    """`HOST:PORT` (an IPv6 host in brackets) split, its port range checked; judging the
    host is the caller's. ValueError(accepted) for anything else."""
    if not isinstance(raw, str):
        raise ValueError(accepted)
    host, sep, port_text = raw.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(accepted)
    if not lowest_port <= int(port_text) <= 65535:
        raise ValueError(accepted)
    return host, int(port_text)


def is_ip_or_localhost(host: str) -> bool:
    """An IP address literal, or `localhost`: never a name to resolve."""
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_intake(raw: object) -> tuple[str, int] | None:
    """`host:port` on this machine's loopback for Ray's reporter, or 'off'."""
    accepted = "'off' or HOST:PORT with a loopback host (127.0.0.1, [::1], localhost)"
    if isinstance(raw, str) and raw.strip().lower() in ("off", "none", "no", "false", ""):
        return None
    host, port = split_host_port(raw, accepted)
    if not _is_loopback(host):
        raise ValueError(accepted)
    return host, port


def parse_dashboard_address(raw: object) -> tuple[str, int]:
    """Where Ray's dashboard listens (`ray start --dashboard-host/--dashboard-port`)."""
    accepted = "HOST:PORT with an IP address or localhost as HOST (e.g. 127.0.0.1:8265)"
    host, port = split_host_port(raw, accepted, lowest_port=1)
    if not is_ip_or_localhost(host):
        raise ValueError(accepted)
    return host, port


def field_names(raw: object) -> tuple[str, ...]:
    accepted = "a list of report field names (not schema_version, session_id or the counters)"
    items = [p for p in re.split(r"[\s,]+", raw.strip()) if p] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ValueError(accepted)
    for name in items:
        if not redactable(name):
            raise ValueError(f"{accepted} ({name!r} is not one)")
    return tuple(dict.fromkeys(items))


def ray_config_files(raw: object) -> tuple[Path, ...] | None:
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


def ray_tmpdir(raw: object) -> Path:
    """$RAY_TMPDIR: Ray puts its temp root at $RAY_TMPDIR/ray."""
    return absolute_path(raw) / "ray"


def first_entry(raw: str) -> str:
    """systemd may hand several colon-separated directories: the first is ours."""
    return raw.split(":")[0]


def state_dir_default(env: Mapping[str, str], euid: int) -> Path | None:
    """A user's default state directory, under XDG's; None for root: the declared one."""
    if euid == 0:
        return None
    base = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME", "/")) / ".local" / "state")
    return Path(base) / "usagestatsd"


def expand_home(path: Path, env: Mapping[str, str]) -> Path:
    """`~` as $HOME (Ray's consent file is ~/.ray/config.json)."""
    text = str(path)
    if text == "~" or text.startswith("~/"):
        home = env.get("HOME") or os.path.expanduser("~")
        return Path(home + text[1:])
    return path
