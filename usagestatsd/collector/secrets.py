"""Secrets read from files, so that no token or password is on a command line (`ps`),
in the environment of every child, or in the world-readable settings file.

Three secrets, each from the first of: the file named by `--database-url-file` (the
database URL only), the file named by `USAGESTATSD_COLLECTOR_<NAME>_FILE`, or the systemd
credential `<name>` (`LoadCredential=<name>:/etc/...`, read from $CREDENTIALS_DIRECTORY).
A file must be a regular file that only its owner may read (mode 0600 or 0400); a value
read from a file wins over every other layer. Nothing read here is ever echoed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from usagestatsd.config.declare import SettingsError

SECRETS = ("database_url", "ingest_tokens", "deletion_tokens")
MAX_SECRET_BYTES = 64 << 10
MASKED = "(withheld)"


def _candidates(name: str, env: Mapping[str, str], flag_file: str | None) -> list[tuple[Path, str]]:
    found: list[tuple[Path, str]] = []
    if name == "database_url" and flag_file:
        found.append((Path(flag_file), "command line --database-url-file"))
    variable = f"USAGESTATSD_COLLECTOR_{name.upper()}_FILE"
    if env.get(variable):
        found.append((Path(env[variable]), f"environment variable {variable}"))
    credentials = env.get("CREDENTIALS_DIRECTORY")
    if credentials and (Path(credentials) / name).exists():
        found.append((Path(credentials) / name, f"systemd credential {name}"))
    return found


def read_secret(path: Path, name: str, source: str) -> str:
    """The file's text, stripped; a SettingsError (never quoting it) when it will not do."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise SettingsError(name, source, str(path), f"a readable file ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise SettingsError(name, source, str(path), "a regular file")
        if info.st_mode & 0o077:
            raise SettingsError(
                name, source, str(path), "a file only its owner may read (chmod 0600)"
            )
        raw = handle.read(MAX_SECRET_BYTES + 1)
    if len(raw) > MAX_SECRET_BYTES:
        raise SettingsError(name, source, MASKED, f"at most {MAX_SECRET_BYTES} bytes")
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise SettingsError(name, source, MASKED, "UTF-8 text") from None


def secret_values(env: Mapping[str, str], flag_file: str | None) -> dict[str, tuple[str, str]]:
    """For each secret given in a file: (its text, where it came from). Tokens may be one
    a line or comma separated."""
    values: dict[str, tuple[str, str]] = {}
    for name in SECRETS:
        candidates = _candidates(name, env, flag_file)
        if candidates:
            path, source = candidates[0]
            text = read_secret(path, name, f"{source} ({path})")
            if name != "database_url":
                text = ",".join(text.split())
            values[name] = (text, f"{source} ({path})")
    return values
