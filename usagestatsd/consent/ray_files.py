"""Ray's own consent files: `~/.ray/config.json` of the users who run Ray, read beside ours.

`ray disable-usage-stats` writes `{"usage_stats": false}` into the `~/.ray/config.json` of
whoever runs it. The policy tells every Ray user that this opts out, so the daemon reads
those files of root, of its own user and of the owner of Ray's temp root (who started the
sessions found there) beside its own consent file; any of them saying no means no. They
are only read, never written. `ray_config_files` in the settings replaces the list.

A service run as Ray's user cannot open root's home. systemd reads root's file for it
(`LoadCredential=ray-config-root:/root/.ray/config.json` in the unit, with
`SetCredential=ray-config-root:` + ROOT_ABSENT as the fallback when there is none), so root's
`ray disable-usage-stats` is honoured whoever the service runs as.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass, replace
from pathlib import Path

from usagestatsd.config.settings import Settings
from usagestatsd.consent.file import ConsentFile, read_consent_file
from usagestatsd.facts.session import trusted_uids

RAY_CONFIG = Path(".ray") / "config.json"
ROOT_CREDENTIAL = "ray-config-root"
# The unit's SetCredential= fallback: systemd found no /root/.ray/config.json (not JSON, so
# no real config file can be mistaken for it).
ROOT_ABSENT = b"usagestatsd: root has no .ray/config.json"


@dataclass(frozen=True)
class RayConfig:
    """One of Ray's own config files, whose it is, and what it says."""

    whose: str  # for logs and status: "root", "uid 1000", "ray_config_files" (never a name)
    file: ConsentFile


def _home(uid: int) -> Path | None:
    try:
        return Path(pwd.getpwuid(uid).pw_dir)
    except KeyError:
        return None


def _temp_root_owner(temp_root: Path) -> int | None:
    try:
        return temp_root.stat().st_uid
    except OSError:
        return None  # Ray has not created it yet: the daemon's own user is consulted


def ray_config_paths(settings: Settings, euid: int | None = None) -> list[tuple[str, Path]]:
    """Which Ray config files to consult, and whose each is (without the consent file)."""
    if settings.ray_config_files is not None:
        found = [("ray_config_files", path) for path in settings.ray_config_files]
    else:
        uids = [0, os.geteuid() if euid is None else euid, _temp_root_owner(settings.temp_root)]
        found = []
        for uid in dict.fromkeys(u for u in uids if u is not None):
            home = _home(uid)
            if home is not None and str(home) not in ("/", "/nonexistent"):
                found.append(("root" if uid == 0 else f"uid {uid}", home / RAY_CONFIG))
    seen = {settings.consent_file}
    unique = []
    for whose, path in found:
        if path not in seen:
            seen.add(path)
            unique.append((whose, path))
    return unique


def read_ray_configs(settings: Settings) -> tuple[RayConfig, ...]:
    """Read each Ray config file to consult (missing ones are simply undecided).

    Only a file owned by a trusted uid (root, ours, `ray_user`) is read: the temp root,
    whose owner's file is consulted, may have been made by any local user.
    """
    owners = trusted_uids(settings.ray_user)
    return tuple(
        RayConfig(whose, _read(whose, path, owners)) for whose, path in ray_config_paths(settings)
    )


def _read(whose: str, path: Path, owners: frozenset[int]) -> ConsentFile:
    credential = _root_credential() if whose == "root" and os.geteuid() != 0 else None
    if credential is None:
        return read_consent_file(path, owners)
    try:
        with open(credential, "rb") as handle:
            if handle.read(len(ROOT_ABSENT) + 2).strip() == ROOT_ABSENT:
                return ConsentFile(path, False, None)
    except OSError:
        pass  # read_consent_file below names the problem
    # The credential is systemd's copy of root's file, owned by the service's user.
    return replace(read_consent_file(credential, owners), path=path)


def _root_credential() -> Path | None:
    """systemd's copy of root's config.json for this service, if the unit asked for one."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = Path(directory) / ROOT_CREDENTIAL
    try:
        return path if path.is_file() else None
    except OSError:
        return None
