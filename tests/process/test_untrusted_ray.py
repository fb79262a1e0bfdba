"""Ray run as a user the daemon was not told of: named, with the fix, in every view.

Before `usagestatsd setup`, a service run as root beside a Ray run as another user trusts
none of Ray's files. It must not sit silently "waiting for a Ray session": the journal gets
one warning, STATUS= and `usagestatsd status` say whose the files are and what to run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.support.hostile import NOBODY, needs_root
from tests.support.processes import (
    await_line,
    await_looks,
    daemon_env,
    run_cli,
    running_daemon,
)
from tests.support.servers import ScriptedEndpoint
from usagestatsd.demo import DemoCluster, make_session_dir

EXPECTED = "belong to nobody (uid 65534), whom usagestatsd does not trust"


def _as_if_ray_ran_as_nobody(temp_root: Path) -> None:
    """What a Ray started by another user leaves: its temp root, link and session are its."""
    for path in [temp_root, *temp_root.iterdir()]:
        os.chown(path, NOBODY, NOBODY, follow_symlinks=False)


@needs_root
async def test_a_ray_of_an_untrusted_user_is_named_with_the_fix(
    temp_root: Path, state_dir: Path, endpoint: ScriptedEndpoint
) -> None:
    cluster = DemoCluster(make_session_dir(temp_root))
    await cluster.start()
    _as_if_ray_ran_as_nobody(temp_root)
    env = daemon_env(temp_root, state_dir, endpoint.url, USAGESTATSD_LOG_LEVEL="debug")
    try:
        with running_daemon(env) as daemon:
            line = await await_line(daemon, "session.untrusted")
            await await_looks(daemon, 3)  # evidence first: three more looks, the same found
            assert daemon.count("session.untrusted") == 1
            _, out, _ = await run_cli(["status", "--config", "/dev/null"], env)
            _, out_json, _ = await run_cli(["status", "--config", "/dev/null", "--json"], env)
    finally:
        await cluster.stop()
    event = json.loads(line)
    assert event["level"] == "warning" and event["owner"] == "nobody (uid 65534)"
    assert event["fix"] == "sudo usagestatsd setup"
    assert f"Session:        none trusted: Ray's files under {temp_root} {EXPECTED}" in out
    assert "run: sudo usagestatsd setup" in out
    info = json.loads(out_json)
    assert EXPECTED in info["session_untrusted"]
    assert "Not reporting: Ray's files" in (info["service"]["status_line"] or "")
    assert endpoint.received == []
