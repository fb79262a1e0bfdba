"""Log lines: journald priorities, JSON lines, console; what `journalctl -p` relies on."""

from __future__ import annotations

import io
import json
import os
import tempfile

import structlog

from usagestatsd.base import logs


def test_journal_lines_carry_syslog_priority() -> None:
    """Under journald each line starts with <N>; warnings are <4>, info <6>."""
    out = io.StringIO()
    logs.configure("journal", "info", None, out)
    log = structlog.get_logger()
    log.info("report.sent", endpoint="https://e/", status=200)
    log.warning("report.failed", reason="HTTP 503", detail="two words")
    log.debug("hidden.event")
    lines = out.getvalue().splitlines()
    assert lines == [
        "<6>report.sent endpoint=https://e/ status=200",
        '<4>report.failed reason="HTTP 503" detail="two words"',
    ]


def test_json_lines() -> None:
    """Without a terminal or journal: one JSON object per line with event and level."""
    out = io.StringIO()
    assert logs.configure("auto", "info", None, out) == "json"
    structlog.get_logger().warning("session.missing", temp_root="/tmp/ray")
    event = json.loads(out.getvalue())
    assert event["event"] == "session.missing" and event["level"] == "warning"


def test_auto_detects_journald_stream() -> None:
    """JOURNAL_STREAM matching the stream's device:inode selects the journal format."""
    with tempfile.TemporaryFile("w+") as stream:
        st = os.fstat(stream.fileno())
        assert logs.resolve_format("auto", f"{st.st_dev}:{st.st_ino}", stream) == "journal"
        assert logs.resolve_format("auto", "1:2", stream) == "json"
        assert logs.resolve_format("console", f"{st.st_dev}:{st.st_ino}", stream) == "console"


def test_every_value_stays_on_its_line() -> None:
    """A newline, quote or backslash in a value, None, lists: one line, the same with every
    structlog version (Debian 12's 22.3 and the newest), JSON and console alike."""
    values = {"nl": "a\n<0>forged", "q": 'a"b', "bs": "a \\b", "none": None, "lst": ["a", "b"]}
    pairs = r'nl="a\n<0>forged" q="a\"b" bs="a \\b" none=null lst="[\"a\", \"b\"]"'
    out = io.StringIO()
    logs.configure("journal", "info", None, out)
    structlog.get_logger().warning("sender.reply", **values)
    assert out.getvalue() == f"<4>sender.reply {pairs}\n"
    out = io.StringIO()
    logs.configure("console", "info", None, out)
    structlog.get_logger().warning("sender.reply", **values)
    assert out.getvalue().splitlines()[0][8:] == f" warning sender.reply {pairs}"
    out = io.StringIO()
    logs.configure("json", "info", None, out)
    structlog.get_logger().warning("sender.reply", **values)
    [line] = out.getvalue().splitlines()
    event = json.loads(line)
    assert event.pop("timestamp").endswith("Z")
    assert event == {**values, "event": "sender.reply", "level": "warning"}
