"""Ray's global config file in Ray's format: read it, or update its usage_stats key.

Apart from the decision (consent/decision.py) so that Ray's users' own config files
(consent/ray_files.py),
which the decision consults, can be read with it without the two importing each other.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from usagestatsd.base.files import (
    UnsafeFileError,
    UntrustedOwnerError,
    atomic_write,
    read_regular_file,
)
from usagestatsd.contract.fieldsets import CURRENT_VERSION

# Our own key beside Ray's "usage_stats": the field-set version consent was given for.
FIELDS_VERSION_KEY = "usage_stats_fields_version"

MAX_CONSENT_FILE_BYTES = 64 << 10


class ConsentFileError(Exception):
    """The consent file exists but is not a JSON object we can safely update."""


@dataclass(frozen=True)
class ConsentFile:
    """What the Ray-format config file says: its usage_stats value, or why it cannot be used."""

    path: Path
    exists: bool
    value: bool | None
    problem: str | None = None
    content: dict[str, Any] | None = None
    # Permission denied: nothing can be known of what it says (only Ray users' files, read
    # by a daemon running as another user, are ever skipped for this: see _ray_layer).
    unreadable: bool = False
    # Owned by a uid that may not decide for Ray's users: not read, and ignored (_ray_layer).
    untrusted_owner: int | None = None

    @property
    def fields_version(self) -> int:
        """The field set consent was given for; 1 when the file predates versions (Ray's)."""
        raw = (self.content or {}).get(FIELDS_VERSION_KEY)
        return raw if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 1 else 1


def read_consent_file(path: Path, owners: Collection[int] | None = None) -> ConsentFile:
    """Read Ray's global config file; missing or empty is undecided, broken is a problem.

    With `owners`, a file owned by anyone else is not read (`untrusted_owner`).
    """
    try:
        raw = read_regular_file(path, MAX_CONSENT_FILE_BYTES, owners=owners)
    except FileNotFoundError:
        return ConsentFile(path, False, None)
    except UntrustedOwnerError as exc:
        return ConsentFile(path, True, None, exc.strerror, untrusted_owner=exc.owner)
    except UnsafeFileError as exc:
        return ConsentFile(path, True, None, f"{exc.strerror}")
    except PermissionError as exc:
        return ConsentFile(path, True, None, f"cannot be read ({exc.strerror})", unreadable=True)
    except OSError as exc:
        return ConsentFile(path, True, None, f"cannot be read ({exc.strerror})")
    if not raw.strip():
        return ConsentFile(path, True, None, content={})
    try:
        content = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return ConsentFile(path, True, None, "is not valid JSON")
    if not isinstance(content, dict):
        return ConsentFile(path, True, None, "is not a JSON object")
    value = content.get("usage_stats")
    if value is not None and not isinstance(value, bool):
        return ConsentFile(path, True, None, "has a usage_stats value that is not true or false")
    return ConsentFile(path, True, value, content=content)


def write_consent_file(path: Path, enabled: bool) -> None:
    """Set usage_stats in the config file, keeping every other key; refuse a broken file.

    Enabling records that consent covers this release's field set (CURRENT_VERSION).
    """
    current = read_consent_file(path)
    if current.problem:
        raise ConsentFileError(f"{path} {current.problem}; it was left untouched")
    content = dict(current.content or {})
    content["usage_stats"] = enabled
    if enabled:
        content[FIELDS_VERSION_KEY] = CURRENT_VERSION
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(content, indent=2).encode("utf-8") + b"\n"
    atomic_write(path.parent, path.name, data, mode=0o644)
