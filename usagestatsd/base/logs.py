"""The one structlog configuration.

Events are named `area.event` with key=value context. Under journald every line starts with
its syslog priority (`<4>` = warning) so `journalctl -p warning` filters; otherwise JSON
lines (structlog's JSONRenderer), or a readable console format on a terminal. structlog's
own processors add the level and the time; the two key=value formats are written here
(see `_line` for why not with structlog's LogfmtRenderer). Everything goes to stderr.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

_PRIORITY = {"debug": 7, "info": 6, "notice": 5, "warning": 4, "error": 3, "critical": 2}
_LEVEL_NUMBER = {"debug": 10, "info": 20, "warning": 30, "error": 40}


def _under_journald(journal_stream: str | None, stream: TextIO) -> bool:
    """True when `stream` is the journal connection systemd described in $JOURNAL_STREAM."""
    if not journal_stream:
        return False
    try:
        device, inode = (int(part) for part in journal_stream.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


def resolve_format(requested: str, journal_stream: str | None, stream: TextIO) -> str:
    """Pick journal, json or console for 'auto'; keep an explicit choice."""
    if requested != "auto":
        return requested
    if _under_journald(journal_stream, stream):
        return "journal"
    if stream.isatty():
        return "console"
    return "json"


def _quote(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text == "" or any(c in text for c in ' ="\n\t'):
        return json.dumps(text)
    return text


def _line(head: str, event: MutableMapping[str, Any]) -> str:
    """`head` then `key=value` pairs: a value with a space, quote, `=` or control character
    is written as a JSON string, so one event is always one line (a hostile value cannot
    start a line of its own) and reads the same with every structlog version. structlog's
    LogfmtRenderer does not: 22.3 (Debian 12) writes a newline raw, newer ones escape it,
    and both write None as an empty value and lists as Python reprs."""
    pairs = " ".join(f"{k}={_quote(v)}" for k, v in event.items())
    return head + (f" {pairs}" if pairs else "")


def render_journal(_: Any, method: str, event: MutableMapping[str, Any]) -> str:
    """`<prio>area.event key=value ...`: one line, priority understood by journald."""
    level = event.pop("level", method)
    name = event.pop("event", "")
    return _line(f"<{_PRIORITY.get(level, 6)}>{name}", event)


def render_console(_: Any, method: str, event: MutableMapping[str, Any]) -> str:
    """`HH:MM:SS level   area.event key=value` for people at a terminal (structlog's
    ConsoleRenderer writes `[level]`, pads the event and sorts the keys)."""
    level = event.pop("level", method)
    name = event.pop("event", "")
    stamp = event.pop("timestamp", "")
    return _line(f"{stamp} {level:<7} {name}", event)


class _Tolerant:
    """A stream whose write errors are dropped: a closed or full stderr (journald restarted,
    a pipe whose reader went away) must never break the daemon, or its stop."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError):
            silence(self._stream)
            return 0

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError):
            silence(self._stream)


def silence(stream: TextIO) -> None:
    """Point a stream whose reader is gone at /dev/null, keeping its file descriptor.

    A failed write leaves its text in the stream's buffer, and Python flushes that buffer
    again at exit: failing there, the interpreter exits 120 instead of the daemon's own
    status (unless PYTHONUNBUFFERED happened to be set). With the descriptor on /dev/null
    the pending text drains harmlessly, now and at exit.
    """
    try:
        fd = stream.fileno()
        null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return
    try:
        os.dup2(null, fd, inheritable=fd <= 2)
    except OSError:
        pass
    finally:
        os.close(null)
    with contextlib.suppress(OSError, ValueError):
        stream.flush()


def flush_standard_streams() -> None:
    """Flush stdout and stderr before exit; a stream whose reader is gone is silenced."""
    for stream in (sys.stdout, sys.stderr):
        if stream is None:
            continue
        try:
            stream.flush()
        except (OSError, ValueError):
            silence(stream)


def configure(
    log_format: str = "auto",
    level: str = "info",
    journal_stream: str | None = None,
    stream: TextIO | None = None,
) -> str:
    """Configure structlog once for the process; return the format actually used."""
    out = stream or sys.stderr
    chosen = resolve_format(log_format, journal_stream, out)
    processors: list[Any] = [structlog.processors.add_log_level]
    if chosen == "journal":  # journald stamps each line itself
        processors.append(render_journal)
    elif chosen == "json":
        processors.append(structlog.processors.TimeStamper(fmt="iso", utc=True))
        processors.append(structlog.processors.JSONRenderer(default=str))
    else:
        processors.append(structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=True))
        processors.append(render_console)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVEL_NUMBER.get(level, 20)),
        logger_factory=structlog.PrintLoggerFactory(file=_Tolerant(out)),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    # Libraries log through stdlib logging: keep them quiet unless they fail.
    logging.basicConfig(level=logging.ERROR, stream=out)
    return chosen
