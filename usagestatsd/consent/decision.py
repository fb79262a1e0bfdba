"""The enable decision, taken once at start, as a value that says which layer decided and why.

Layers, first that decides wins:
1. --disable-usage-stats (command line) or disable_usage_stats = true (settings file);
2. RAY_USAGE_STATS_ENABLED: 1 or 0; anything else disables, with an error;
3. DO_NOT_TRACK set to a true value;
4. the global config file in Ray's format, key usage_stats (true/false), and beside it
   Ray's own ~/.ray/config.json of Ray's users (consent/ray_files.py): any false disables; a
   broken file disables, with an error; none is ever rewritten by the daemon;
5. an interactive prompt (saved to the config file so it is asked once);
6. otherwise enabled by default, with a notice (not saved).
Reading and writing that config file, keeping its other keys, is consent/file.py's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import TYPE_CHECKING, Protocol

from usagestatsd.config.settings import Settings
from usagestatsd.consent.file import ConsentFile as ConsentFile
from usagestatsd.consent.file import ConsentFileError as ConsentFileError
from usagestatsd.consent.file import read_consent_file as read_consent_file
from usagestatsd.consent.file import write_consent_file as write_consent_file
from usagestatsd.contract.fieldsets import CURRENT_VERSION

if TYPE_CHECKING:
    from usagestatsd.consent.ray_files import RayConfig

_FALSE = ("0", "false", "no", "off", "")


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


def _disable_flag_layer(settings: Settings) -> tuple[str, str]:
    if "disable_usage_stats" in settings.set_by_flag:
        return "command line", "--disable-usage-stats"
    return "settings file", f"{settings.settings_file}: disable_usage_stats = true"


def decide(
    settings: Settings,
    consent_file: ConsentFile,
    interactive: bool,
    prompt: Callable[[], bool] | None = None,
    ray_configs: Sequence[RayConfig] = (),
) -> Decision:
    """Apply the layers in order and return the first that decides.

    `ray_configs` are Ray's own config files of Ray's users (consent/ray_files.py), consulted
    beside the consent file: any of them saying no means no.
    """
    env = settings.consent_inputs.usage_stats_enabled
    dnt = settings.consent_inputs.do_not_track
    consulted = (
        Consulted(
            "disable flag",
            settings.source_of("disable_usage_stats"),
            str(settings.disable_usage_stats).lower(),
        ),
        Consulted("RAY_USAGE_STATS_ENABLED", "environment", env),
        Consulted("DO_NOT_TRACK", "environment", dnt),
        Consulted("config file", str(consent_file.path), consulted_value(consent_file)),
        *(
            Consulted(f"Ray config file ({r.whose})", str(r.file.path), consulted_value(r.file))
            for r in ray_configs
        ),
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
    ray_no = _ray_layer(ray_configs, consent_file, made)
    if ray_no is not None:
        return ray_no
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
    ray_yes = next((r for r in ray_configs if r.file.value is True), None)
    if ray_yes is not None:  # `ray enable-usage-stats`: consent to Ray's field set (version 1)
        decision = made(
            True,
            "Ray config file",
            f"~/.ray/config.json of {ray_yes.whose}",
            "true",
            f"enabled by Ray's ~/.ray/config.json of {ray_yes.whose}",
            f"run 'ray disable-usage-stats' as {ray_yes.whose} (or 'usagestatsd disable') "
            "and restart the service",
        )
        return replace(decision, accepted_fields_version=ray_yes.file.fields_version)
    prompt_allowed = settings.consent_inputs.prompt_enabled != "0"
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


class _Made(Protocol):
    def __call__(
        self,
        enabled: bool,
        layer: str,
        where: str,
        value: str | None,
        reason: str,
        how: str,
        error: str | None = None,
        save: bool = False,
    ) -> Decision: ...


def _ray_layer(
    ray_configs: Sequence[RayConfig], consent_file: ConsentFile, made: _Made
) -> Decision | None:
    """A no from the consent file or any Ray config file; a broken Ray config file is a no.

    A file the daemon may not read (root's home, for a daemon running as Ray's user) says
    nothing: `status` lists it as unreadable.
    """
    if consent_file.value is False:
        return None  # the consent file's own no, below, names it
    for ray in ray_configs:
        where = f"~/.ray/config.json of {ray.whose}"
        if ray.file.untrusted_owner is not None:
            continue  # another user's word: not Ray's users' (logged by the caller)
        if ray.file.problem and not ray.file.unreadable:
            return made(
                False,
                "Ray config file",
                where,
                None,
                f"disabled because Ray's config file of {ray.whose} is broken",
                f"fix or remove {ray.file.path} and restart the service",
                f"Ray's config file {where} {ray.file.problem}; usage stats are disabled",
            )
        if ray.file.value is False:
            return made(
                False,
                "Ray config file",
                where,
                "false",
                f"disabled by 'ray disable-usage-stats' ({where})",
                f"run 'ray enable-usage-stats' as {ray.whose} and restart the service",
            )
    return None


class Unheeded(Enum):
    """Why a consulted file said nothing: its value in `consulted` starts with the word."""

    UNTRUSTED = "ignored"  # owned by a uid that may not decide for Ray's users
    UNUSABLE = "unusable"  # cannot be read, or does not hold a usable value


def unheeded(consent_file: ConsentFile) -> Unheeded | None:
    """Why the file's word was not taken, if it was not (and not for lack of a file)."""
    if consent_file.untrusted_owner is not None:
        return Unheeded.UNTRUSTED
    if consent_file.problem:
        return Unheeded.UNUSABLE
    return None


def consulted_value(consent_file: ConsentFile) -> str | None:
    """What `consulted` shows for a file: its value, or why it said nothing."""
    why = unheeded(consent_file)
    if why is not None:
        return f"{why.value}: {consent_file.problem}"
    if not consent_file.exists:
        return "absent"
    return None if consent_file.value is None else str(consent_file.value).lower()
