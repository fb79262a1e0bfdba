"""Where the demo is not installed (the .deb and the .rpm leave it out), its commands say so."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import usagestatsd

PACKAGE = Path(usagestatsd.__file__).parent


def _installed_like_the_packages(root: Path) -> Path:
    """The package as the .deb installs it: everything but the demo (and the collector)."""
    shutil.copytree(
        PACKAGE,
        root / "usagestatsd",
        ignore=shutil.ignore_patterns("__pycache__", "demo", "collector"),
    )
    return root


@pytest.mark.parametrize("command", [["demo"], ["demo-cluster"], ["demo-receiver"]])
def test_a_demo_command_without_the_demo_says_where_it_lives(
    tmp_path: Path, command: list[str]
) -> None:
    root = _installed_like_the_packages(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "usagestatsd", *command],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr == (
        f"usagestatsd {command[0]}: the demo is not installed with the package;"
        " run it from a source checkout: make run\n"
    )
    assert done.stdout == ""
