"""The small typed parts of Settings: the retry policy (declared settings, `[retry]` in
the file), what systemd hands the process, and the raw consent inputs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from usagestatsd.config.declare import setting
from usagestatsd.config.values import integer_in, number_in

_SECONDS = "seconds"


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one report is pushed to one endpoint before it counts as failed."""

    max_attempts: int = setting(
        5, integer_in(1, 20), env=("USAGESTATSD_RETRY_MAX_ATTEMPTS",), doc="1 to 20"
    )
    initial_delay_s: float = setting(
        2.0,
        number_in(0.001, 3600, _SECONDS),
        env=("USAGESTATSD_RETRY_INITIAL_DELAY_S",),
        doc="first back-off; doubles, with jitter",
    )
    max_delay_s: float = setting(
        60.0,
        number_in(0.001, 3600, _SECONDS),
        env=("USAGESTATSD_RETRY_MAX_DELAY_S",),
        doc="largest back-off",
    )
    budget_s: float = setting(
        300.0,
        number_in(0.01, 86400, _SECONDS),
        env=("USAGESTATSD_RETRY_BUDGET_S",),
        doc="total retry time, never more than a quarter of the interval",
    )

    def budget_for(self, interval_s: float) -> float:
        """Total retry time, kept well under the report interval (a quarter of it at most)."""
        return min(self.budget_s, interval_s / 4)


@dataclass(frozen=True)
class SystemdHandoff:
    """What systemd hands the process in its environment (never an operator's setting)."""

    notify_socket: str | None = None  # $NOTIFY_SOCKET: where READY=1/STATUS= go
    watchdog_usec: int | None = None  # $WATCHDOG_USEC: ping at least this often
    watchdog_pid: int | None = None  # $WATCHDOG_PID: the pid the watchdog is for
    journal_stream: str | None = None  # $JOURNAL_STREAM: device:inode of the journal stream

    VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SystemdHandoff:
        """Read leniently: a malformed value is as if systemd had not set it."""
        usec = _optional_int(env.get("WATCHDOG_USEC"))
        return cls(
            notify_socket=env.get("NOTIFY_SOCKET") or None,
            watchdog_usec=usec if usec and usec > 0 else None,
            watchdog_pid=_optional_int(env.get("WATCHDOG_PID")),
            journal_stream=env.get("JOURNAL_STREAM") or None,
        )


@dataclass(frozen=True)
class ConsentInputs:
    """The consent variables, raw: consent/decision.py decides, and a bad value there disables
    collection instead of stopping start-up (docs/consent.md)."""

    usage_stats_enabled: str | None = None  # $RAY_USAGE_STATS_ENABLED
    do_not_track: str | None = None  # $DO_NOT_TRACK
    prompt_enabled: str | None = None  # $RAY_USAGE_STATS_PROMPT_ENABLED

    VARIABLES = ("RAY_USAGE_STATS_ENABLED", "DO_NOT_TRACK", "RAY_USAGE_STATS_PROMPT_ENABLED")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ConsentInputs:
        """The three variables as they are (None when unset)."""
        return cls(*(env.get(name) for name in cls.VARIABLES))


def _optional_int(raw: str | None) -> int | None:
    try:
        return int(raw) if raw else None
    except ValueError:
        return None
