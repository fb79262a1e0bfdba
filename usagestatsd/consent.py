"""The enable decision, taken once at start, as a value that says which layer decided and why.

Layers, first that decides wins:
1. --disable-usage-stats (command line) or disable_usage_stats = true (settings file);
2. RAY_USAGE_STATS_ENABLED: 1 or 0; anything else disables, with an error;
3. DO_NOT_TRACK set to a true value;
4. the global config file in Ray's format, key usage_stats (true/false); a broken file
   disables, with an error, and is never rewritten by the daemon;
5. an interactive prompt (saved to the config file so it is asked once);
6. otherwise enabled by default, with a notice (not saved).
Also here: reading and writing that config file, keeping its other keys.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from usagestatsd.fieldsets import CURRENT_VERSION
from usagestatsd.fileio import UnsafeFileError, atomic_write, read_regular_file
from usagestatsd.settings import Settings

# Our own key beside Ray's "usage_stats": the field-set version consent was given for.
FIELDS_VERSION_KEY = "usage_stats_fields_version"

MAX_CONSENT_FILE_BYTES = 64 << 10
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


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

    @property
    def fields_version(self) -> int:
        """The field set consent was given for; 1 when the file predates versions (Ray's)."""
        raw = (self.content or {}).get(FIELDS_VERSION_KEY)
        return raw if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 1 else 1


@dataclass(frozen=True)
class Consulted:
    """One source the decision looked at, and what it held (for `status`)."""

    layer: str
    where: str
    value: str | None


@dataclass(frozen=True)
class Decision:
    """Whether usage stats are collected, which layer decided, and how to change it."""

    enabled: bool
    layer: str
    where: str
    value: str | None
    reason: str
    how_to_change: str
    error: str | None
    consulted: tuple[Consulted, ...]
    save_prompt_answer: bool = False
    accepted_fields_version: int = CURRENT_VERSION


def read_consent_file(path: Path) -> ConsentFile:
    """Read Ray's global config file; missing or empty is undecided, broken is a problem."""
    try:
        raw = read_regular_file(path, MAX_CONSENT_FILE_BYTES)
    except FileNotFoundError:
        return ConsentFile(path, False, None)
    except UnsafeFileError as exc:
        return ConsentFile(path, True, None, f"{exc.strerror}")
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


def _disable_flag_layer(settings: Settings) -> tuple[str, str]:
    source = settings.source_of("disable_usage_stats")
    if source.startswith("command line"):
        return "command line", "--disable-usage-stats"
    return "settings file", f"{settings.settings_file}: disable_usage_stats = true"


def decide(
    settings: Settings,
    consent_file: ConsentFile,
    interactive: bool,
    prompt: Callable[[], bool] | None = None,
) -> Decision:
    """Apply the layers in order and return the first that decides."""
    env = settings.usage_stats_enabled_env
    dnt = settings.do_not_track_env
    consulted = (
        Consulted(
            "disable flag",
            settings.source_of("disable_usage_stats"),
            str(settings.disable_usage_stats).lower(),
        ),
        Consulted("RAY_USAGE_STATS_ENABLED", "environment", env),
        Consulted("DO_NOT_TRACK", "environment", dnt),
        Consulted("config file", str(consent_file.path), _file_value(consent_file)),
    )

    def made(
        enabled: bool,
        layer: str,
        where: str,
        value: str | None,
        reason: str,
        how: str,
        error: str | None = None,
        save: bool = False,
    ) -> Decision:
        return Decision(enabled, layer, where, value, reason, how, error, consulted, save)

    if settings.disable_usage_stats:
        layer, where = _disable_flag_layer(settings)
        return made(
            False,
            layer,
            where,
            "true",
            "usage stats disabled by " + where,
            f"remove {where} and restart the service",
        )
    if env is not None:
        if env == "1":
            return made(
                True,
                "RAY_USAGE_STATS_ENABLED",
                "environment",
                env,
                "enabled by RAY_USAGE_STATS_ENABLED=1",
                "set RAY_USAGE_STATS_ENABLED=0 and restart the service",
            )
        if env == "0":
            return made(
                False,
                "RAY_USAGE_STATS_ENABLED",
                "environment",
                env,
                "disabled by RAY_USAGE_STATS_ENABLED=0",
                "unset RAY_USAGE_STATS_ENABLED (or set it to 1) and restart the service",
            )
        error = (
            f"RAY_USAGE_STATS_ENABLED has the value {env[:40]!r}; accepted values are "
            "1 (enable) and 0 (disable); usage stats are disabled until it is fixed"
        )
        return made(
            False,
            "RAY_USAGE_STATS_ENABLED",
            "environment",
            env,
            "disabled because RAY_USAGE_STATS_ENABLED is invalid",
            "set RAY_USAGE_STATS_ENABLED to 1 or 0 and restart the service",
            error,
        )
    if dnt is not None and dnt.strip().lower() not in _FALSE:
        return made(
            False,
            "DO_NOT_TRACK",
            "environment",
            dnt,
            "disabled by DO_NOT_TRACK",
            "unset DO_NOT_TRACK and restart the service",
        )
    if consent_file.problem:
        error = (
            f"consent file {consent_file.path} {consent_file.problem}; usage stats are "
            "disabled and the file is left untouched"
        )
        return made(
            False,
            "config file",
            str(consent_file.path),
            None,
            "disabled because the consent file is broken",
            f"fix or remove {consent_file.path} and restart the service",
            error,
        )
    if consent_file.value is not None:
        word = "enabled" if consent_file.value else "disabled"
        other = "disable" if consent_file.value else "enable"
        decision = made(
            consent_file.value,
            "config file",
            str(consent_file.path),
            str(consent_file.value).lower(),
            f"{word} by {consent_file.path}",
            f"run 'usagestatsd {other}' and restart the service",
        )
        # A fleet may accept a newer field set in the settings file for every head at once.
        accepted = max(consent_file.fields_version, settings.accept_fields_version or 1)
        return replace(decision, accepted_fields_version=min(accepted, CURRENT_VERSION))
    prompt_allowed = settings.prompt_enabled_env != "0"
    if interactive and prompt_allowed and prompt is not None:
        answer = prompt()
        return made(
            answer,
            "prompt",
            "interactive prompt",
            "yes" if answer else "no",
            ("enabled" if answer else "disabled") + " at the prompt",
            f"run 'usagestatsd {'disable' if answer else 'enable'}'",
            save=True,
        )
    return made(
        True,
        "default",
        "policy default (non-interactive)",
        None,
        "enabled by default: nothing said otherwise",
        "run 'usagestatsd disable' (or set RAY_USAGE_STATS_ENABLED=0 or DO_NOT_TRACK=1)"
        " and restart the service",
    )


def _file_value(consent_file: ConsentFile) -> str | None:
    if consent_file.problem:
        return f"unusable: {consent_file.problem}"
    if not consent_file.exists:
        return "absent"
    return None if consent_file.value is None else str(consent_file.value).lower()
