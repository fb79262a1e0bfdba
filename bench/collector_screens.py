"""Screenshots of the collector's pages for docs/collector.md (headless chromium).

The demo fleet's heads set a `team` tag, and the collector groups by it (group_by_tag).

Run: .venv/bin/python bench/collector_screens.py   (writes docs/collector-*.png)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))

from tests.collector.harness import chromium, chromium_run, populate, running_collector

DOCS = Path(__file__).parents[1] / "docs"


def main() -> int:
    """Populate a demo fleet, serve it, and screenshot the fleet page and one session."""
    if chromium() is None:
        print("chromium is not installed: apt-get install -y chromium", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        ids = populate(state)
        env = {"USAGESTATSD_COLLECTOR_GROUP_BY_TAG": "team"}
        with running_collector(state, env=env) as collector:
            # A session of four reports: its table shows what changed from one to the next.
            shots = {
                "collector-fleet.png": (collector.url, "1100,3400"),
                "collector-session.png": (f"{collector.url}sessions/{ids[3]}", "1100,1300"),
            }
            for name, (url, size) in shots.items():
                result = chromium_run(
                    url,
                    Path(tmp) / "profile",
                    f"--screenshot={DOCS / name}",
                    f"--window-size={size}",
                )
                print(f"{name}: exit {result.returncode}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
