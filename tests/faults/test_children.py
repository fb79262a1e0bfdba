"""Python children of the daemon and the CLI import nothing from where they were started.

Root runs `usagestatsd preview` in a directory another local user (the real uid `nobody`)
could write to, with a cluster config to parse: the parse runs in a child process. The
attacker has planted a module under every name that child imports (computed by running
the child's module here), a `usagestatsd/` package, `sitecustomize`/`usercustomize`, and a
user site. Each planted module leaves a marker naming its process; none may be the child's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import usagestatsd
from tests.support.hostile import as_user, needs_root, open_dir
from tests.support.processes import daemon_env
from tests.support.servers import ScriptedEndpoint
from usagestatsd.demo import DemoCluster, make_session_dir, recorded_responses

pytestmark = needs_root

CONFIG_YAML = b"provider: {type: aws}\nmax_workers: 3\nhead_node_type: head\n"
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(usagestatsd.__file__)))
PLANTED = """import os, sys
open(os.path.join({markers!r}, {name!r} + "@" + str(os.getpid())), "w").write(" ".join(sys.argv))
"""


def modules_the_child_imports() -> list[str]:
    """Top-level names in the cluster-config child's sys.modules, by running its module."""
    report = (
        "import atexit, json, runpy, sys; sys.path.insert(0, sys.argv[1]); "
        "atexit.register(lambda: sys.stderr.write(json.dumps(sorted(sys.modules)))); "
        "runpy.run_module('usagestatsd.facts.clusterconfig', run_name='__main__', alter_sys=True)"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", report, PACKAGE_ROOT],
        input=CONFIG_YAML,
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert b"aws" in done.stdout, done.stdout
    names = {name.partition(".")[0] for name in json.loads(done.stderr)}
    return sorted(n for n in names if n.isidentifier() and n != "__main__")


def plant(where: Path, names: list[str]) -> str:
    """As the attacker: a module (or package) under each name, and a user site; marker dir."""
    markers = where / "markers"
    markers.mkdir()
    markers.chmod(0o777)
    site = where / ".local" / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    (site / "site-packages").mkdir(parents=True)
    for name in [*names, "sitecustomize", "usercustomize"]:
        code = PLANTED.format(markers=str(markers), name=name)
        if name == "usagestatsd":
            (where / name).mkdir()
            (where / name / "__init__.py").write_text(code)
        else:
            (where / f"{name}.py").write_text(code)
    (site / "site-packages" / "usercustomize.py").write_text(
        PLANTED.format(markers=str(markers), name="user-site")
    )
    return "planted"


@pytest.fixture
async def served_session(temp_root: Path) -> AsyncIterator[DemoCluster]:
    cluster = DemoCluster(make_session_dir(temp_root), recorded_responses())
    await cluster.start()
    yield cluster
    await cluster.stop()


async def test_cluster_config_child_runs_nothing_planted_in_the_current_directory(
    served_session: DemoCluster, temp_root: Path, state_dir: Path, tmp_path: Path
) -> None:
    names = modules_the_child_imports()
    assert {"yaml", "json", "usagestatsd"} <= set(names)
    attacker_dir = open_dir()
    try:
        assert as_user(lambda: plant(attacker_dir, names)) == "planted"
        config = tmp_path / "ray_bootstrap_config.yaml"
        config.write_bytes(CONFIG_YAML)
        settings_file = tmp_path / "usagestatsd.toml"
        settings_file.write_text("")
        endpoint = ScriptedEndpoint()  # never started: preview sends nothing
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "USAGESTATSD_"))},
            **daemon_env(temp_root, state_dir, endpoint.url),
            "USAGESTATSD_CLUSTER_CONFIG": str(config),
            "HOME": str(attacker_dir),  # a user site where the attacker could write
        }
        # The installed command, as root types it: its own directory, not the cwd, is first
        # on its import path.
        command = str(Path(sys.executable).parent / "usagestatsd")
        done = await _run([command, "preview", "--config", str(settings_file)], env, attacker_dir)
        markers = sorted(os.listdir(attacker_dir / "markers"))
        by_children = [m for m in markers if not m.endswith(f"@{done.pid}")]
        print(f"\nplanted {len(names)} module names; markers by a child: {by_children}")
        assert by_children == [], f"planted code ran as root in a child: {by_children}"
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["cloud_provider"] == "aws"  # the child still parsed the config
    finally:
        shutil.rmtree(attacker_dir, ignore_errors=True)


class _Done:
    def __init__(self, pid: int, returncode: int, stdout: str, stderr: str) -> None:
        self.pid, self.returncode, self.stdout, self.stderr = pid, returncode, stdout, stderr


async def _run(argv: list[str], env: dict[str, str], cwd: Path) -> _Done:
    import asyncio

    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return _Done(proc.pid, proc.returncode or 0, out.decode(), err.decode())
