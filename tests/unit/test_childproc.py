"""The command line of every Python child (usagestatsd/base/childproc.py), run for real."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import usagestatsd
from usagestatsd.base.childproc import python_module


def test_child_imports_the_parents_package_and_nothing_from_its_cwd_or_pythonpath(
    tmp_path: Path,
) -> None:
    planted = tmp_path / "usagestatsd"
    planted.mkdir()
    (planted / "__init__.py").write_text("raise SystemExit('planted package imported')\n")
    (tmp_path / "argparse.py").write_text("raise SystemExit('planted argparse imported')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "PYTHONSTARTUP": str(tmp_path / "x.py")}
    done = subprocess.run(
        python_module("usagestatsd", "--version"),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (done.returncode, done.stdout.strip()) == (0, f"usagestatsd {usagestatsd.__version__}")
