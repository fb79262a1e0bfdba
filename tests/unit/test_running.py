"""service.json, the one document of what the service is doing: its format, old and new."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from usagestatsd.cli.status import describe, render
from usagestatsd.config.settings import Settings
from usagestatsd.demo import make_session_dir
from usagestatsd.store.service_record import FORMAT, Held, RecordStore, proc_start

STANDING_DOWN = "standing down: Ray's own reporter sends this session's reports itself"
# service.json as the previous version (format 1) wrote it, standing down beside Ray.
FORMAT1 = """{
 "beside": {"arrangement": "direct", "last_ray_report_ms": 1795909919121, "mode": "auto",
  "session": "session_x", "standing_down": true},
 "consent": {"accepted_fields_version": 2, "consulted": [], "enabled": true, "error": null,
  "how_to_change": "usagestatsd disable", "layer": "consent file",
  "reason": "usage_stats is true in the consent file", "save_prompt_answer": false,
  "value": "true", "where": "/etc/ray/config.json"},
 "endpoints": ["https://usage.example/"],
 "format": 1,
 "inputs": {"command_line": {}, "environment": {"RAY_USAGE_STATS_ENABLED": "1"},
  "settings_file": null},
 "intake": {"address": "127.0.0.1:18922", "listening": true, "problem": null,
  "url": "http://127.0.0.1:18922/"},
 "interval_s": 3600.0,
 "next_report_ms": null,
 "not_reporting": "standing down: Ray's own reporter sends this session's reports itself",
 "pid": 4242,
 "proc_start": "123",
 "session": "session_x",
 "started_ms": 1795909859121,
 "status_line": "Standing down",
 "stopped_ms": null,
 "temp_root": "/tmp/ray"
}
"""


def format1(**changes: Any) -> str:
    data = json.loads(FORMAT1)
    data.update(changes)
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


@pytest.mark.parametrize(
    ("not_reporting", "held"),
    [(STANDING_DOWN, Held.STANDING_DOWN), ("the head is stopped", Held.REFUSED), (None, None)],
)
def test_a_format1_record_loads_with_the_kind_of_its_hold(
    tmp_path: Path, not_reporting: str | None, held: Held | None
) -> None:
    """The previous version's record is read; its hold's words give the kind they always meant."""
    store = RecordStore(tmp_path)
    store.path.write_text(format1(not_reporting=not_reporting))
    record, problem = store.load()
    assert problem is None and record is not None
    assert record.format == 1
    assert record.held == (held.value if held else None)
    assert record.not_reporting == not_reporting


def test_a_new_record_is_written_as_format_2_with_its_kind(tmp_path: Path) -> None:
    """The kind is on disk beside the words; the record reads back equal."""
    store = RecordStore(tmp_path)
    store.path.write_text(format1())
    old, _ = store.load()
    assert old is not None
    store.save(old)
    data = json.loads(store.path.read_text())
    assert FORMAT == 2 and data["format"] == 2 and data["held"] == "standing down"
    new, problem = store.load()
    assert problem is None and new is not None and new.format == 2
    assert new.held == old.held and new.not_reporting == old.not_reporting


def running_format1(settings: Settings, session: Path, **changes: Any) -> None:
    """A format-1 record of this very process, so that `status` takes it as running."""
    pid = os.getpid()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    RecordStore(settings.state_dir).path.write_text(
        format1(pid=pid, proc_start=proc_start(pid), session=session.name, **changes)
    )


def test_status_of_an_older_running_service_standing_down(
    make_settings: Callable[..., Settings], temp_root: Path
) -> None:
    """Its stand-down shows as one (from the record's kind), with no next report."""
    settings = make_settings()
    running_format1(settings, make_session_dir(temp_root))
    record, _ = RecordStore(settings.state_dir).load()
    assert record is not None
    info = describe(settings, record.consent)
    assert info["standing_down"] == STANDING_DOWN and info["next_report"] is None
    assert f"Next report:    none ({STANDING_DOWN})" in render(info)


def test_status_of_an_older_running_service_says_so_for_the_next_report(
    make_settings: Callable[..., Settings], temp_root: Path
) -> None:
    """Its later reports' times are where this version does not look: it says why not."""
    settings = make_settings()
    running_format1(
        settings, make_session_dir(temp_root), not_reporting=None, next_report_ms=1795913459121
    )
    record, _ = RecordStore(settings.state_dir).load()
    assert record is not None
    info = describe(settings, record.consent)
    assert info["service"]["running"] and info["next_report"] is None
    assert info["standing_down"] is None and info["not_reporting"] is None
    assert (
        "Next report:    unknown (the running service is an older version: "
        "'systemctl restart usagestatsd')"
    ) in render(info)
