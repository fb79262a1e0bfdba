"""`usagestatsd setup` against a real Ray head: it finds Ray with no configuration.

The head runs under a private temp root (`--temp-root` picks it among any other heads on
this machine). Without systemd here, setup reports the units as inactive; the journey
under real systemd is tests/e2e/journey.sh.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.ray.harness import RayHead, clean_environ, ray_python_or_skip, set_subreaper
from tests.support.poll import wait_until
from usagestatsd.contract.fields import ray_release
from usagestatsd.contract.ray_support import METADATA_OVER_HTTP

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def head() -> Iterator[RayHead]:
    python = ray_python_or_skip()
    set_subreaper(True)
    ray = RayHead(python, "http://127.0.0.1:18922/", 3600)
    try:
        ray.start()
        yield ray
    finally:
        ray.close()
        set_subreaper(False)


def setup(head: RayHead, settings_text: str = "") -> tuple[int, str]:
    settings = head.base / "settings.toml"
    settings.write_text(settings_text)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "usagestatsd",
            "setup",
            "--config",
            str(settings),
            "--temp-root",
            str(head.root),
        ],
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout + done.stderr


def test_setup_finds_the_real_head(head: RayHead) -> None:
    status, out = setup(head)
    assert status == 1, out  # no provider yet (and no systemd here)
    assert f"user:          {pwd.getpwuid(os.geteuid()).pw_name}" in out
    assert f"Python:        {head.python}" in out  # the venv's, not /usr/bin/python3.11
    version = subprocess.check_output(
        [head.python, "-c", "import ray; print(ray.__version__)"], text=True
    )
    assert f"Ray version:   {version.strip()} (installed package)" in out
    assert f"temp root:     {head.root}" in out
    assert f"session:       {head.session_dir()}" in out
    assert "its reporter:  sends to http://127.0.0.1:18922/" in out
    assert "No provider serves this session" in out
    assert "Ray's own reporter sends to" not in out  # routed: nothing to do on Ray's side


def test_setup_sees_the_provider_once_it_serves(head: RayHead) -> None:
    head.start_provider()
    session = head.session_dir()
    assert session is not None
    wait_until(
        lambda: (session / "sockets" / "usagestatsd_provider").exists(),
        60,
        "the provider's socket",
        lambda: "\n".join(head.provider_lines),
    )
    _, out = setup(head)
    assert "No provider serves this session" not in out
    assert "; serving" in out
    head.stop_provider()


def test_unrouted_shell_started_head_gets_the_ray_start_line(head: RayHead) -> None:
    # The head's reporter sends to 127.0.0.1:18922; an intake elsewhere makes it unrouted.
    _, out = setup(head, 'ray_intake = "127.0.0.1:18923"\n')
    assert "started by:    a shell (no systemd unit)" in out
    release = ray_release(head.installed_version())
    if release is not None and release < METADATA_OVER_HTTP:
        # No provider runs here, and without one such a head cannot be reported: not routed.
        assert "is not supported without the usagestatsd provider" in out
        assert "not routed to usagestatsd's intake" in out and "start --head" not in out
        return
    assert "not to usagestatsd's intake http://127.0.0.1:18923/" in out
    ray_cli = head.python.rsplit("/", 1)[0] + "/ray"
    assert (
        f"RAY_USAGE_STATS_REPORT_URL=http://127.0.0.1:18923/ {ray_cli} start --head "
        f"--temp-dir={head.root} <your usual options>" in out
    )
    assert "Stop it by your usual means" in out
