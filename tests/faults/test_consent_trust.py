"""Ray's `~/.ray/config.json` decides consent only when a trusted uid owns it.

The attacker, the real uid `nobody`, creates Ray's temp root before Ray does, so the daemon
(as root) consults the temp root owner's `~/.ray/config.json`. `nobody` has no home here
(/nonexistent), as a local user would, so the daemon runs in a private mount namespace
whose /etc/passwd gives `nobody` a home the attacker wrote (and root an empty one, so the
machine's own files play no part). Nothing of the project is replaced.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.hostile import NOBODY, as_user, needs_root, open_dir
from tests.support.poll import wait_until
from tests.support.processes import daemon_env, end_process, spawn_logged
from usagestatsd.config.settings import Settings
from usagestatsd.consent.decision import decide, read_consent_file
from usagestatsd.consent.ray_files import read_ray_configs

pytestmark = [
    needs_root,
    pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)"),
]

DECIDED = ('"consent.disabled"', '"consent.enabled"', '"consent.default_enabled"')


def plant(home: Path, temp_root: Path) -> str:
    """As nobody: Ray's temp root, made first, and a home saying usage stats are off."""
    temp_root.mkdir()
    temp_root.chmod(0o777)
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "config.json").write_text('{"usage_stats": false}')
    return "planted"


def passwd_with_homes(where: Path, homes: dict[str, Path]) -> Path:
    """A copy of /etc/passwd in which the named users have the given homes."""
    lines = []
    for line in Path("/etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if len(fields) == 7 and fields[0] in homes:
            fields[5] = str(homes[fields[0]])
        lines.append(":".join(fields))
    path = where / "passwd"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def attacker_dir() -> Iterator[Path]:
    path = open_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_config_json_of_a_temp_root_made_by_another_user_is_ignored(
    attacker_dir: Path, tmp_path: Path
) -> None:
    home, temp_root = attacker_dir / "home", attacker_dir / "ray"
    assert as_user(lambda: plant(home, temp_root)) == "planted"
    root_home = tmp_path / "root-home"
    root_home.mkdir()
    passwd = passwd_with_homes(tmp_path, {"nobody": home, "root": root_home})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "USAGESTATSD_", "DO_"))}
    env.update(daemon_env(temp_root, tmp_path / "state", "http://127.0.0.1:9/"))
    for decided_before_ray in ("RAY_USAGE_STATS_ENABLED", "USAGESTATSD_RAY_CONFIG_FILES"):
        del env[decided_before_ray]  # the default: root's, ours and the temp root owner's
    env["RAY_USAGE_STATS_CONFIG_PATH"] = str(tmp_path / "consent.json")
    settings = tmp_path / "usagestatsd.toml"
    settings.write_text("")
    daemon = [sys.executable, "-m", "usagestatsd", "run", "--log-format", "json"]
    in_namespace = f'mount --bind {passwd} /etc/passwd && exec "$@"'
    proc, lines, _ = spawn_logged(
        ["unshare", "-m", "sh", "-c", in_namespace, "sh", *daemon, "--config", str(settings)],
        env,
    )
    try:
        wait_until(
            lambda: any(d in line for line in list(lines) for d in DECIDED) or proc.poll(),
            30,
            what="the consent decision",
        )
    finally:
        end_process(proc, 5)
    print("\n" + "\n".join(lines))
    events = [json.loads(line) for line in lines if line.startswith("{")]
    untrusted = [e for e in events if e["event"] == "consent.ray_config_untrusted"]
    disabled = [e for e in events if e["event"] == "consent.disabled"]
    assert disabled == [], f"another user's config.json switched reporting off: {disabled}"
    assert len(untrusted) == 1
    assert untrusted[0]["problem"] == "ignored: owned by uid 65534, not a trusted user"
    assert any(e["event"] == "consent.default_enabled" for e in events)
    assert subprocess.run(["getent", "passwd", "nobody"], capture_output=True).stdout.startswith(
        b"nobody:x:65534:65534:nobody:/nonexistent"
    )  # the machine's own /etc/passwd is untouched


def test_ray_config_files_of_another_user_are_not_read_and_a_fifo_cannot_hang(
    attacker_dir: Path, make_settings: Callable[..., Settings]
) -> None:
    """The same check on operator-listed files in a shared place; no open may block."""
    planted, fifo = attacker_dir / "config.json", attacker_dir / "fifo.json"

    def plant_files() -> str:
        planted.write_text('{"usage_stats": false}')
        os.mkfifo(fifo)
        return "planted"

    assert as_user(plant_files) == "planted"
    trusted = attacker_dir / "root.json"
    trusted.write_text('{"usage_stats": true}')
    settings = make_settings(
        {"USAGESTATSD_RAY_CONFIG_FILES": f"{planted} {fifo} {trusted}"},
    )
    configs = read_ray_configs(settings)  # returns: the FIFO is never opened for reading
    decision = decide(settings, read_consent_file(settings.consent_file), False, None, configs)
    assert (decision.enabled, decision.reason) == (
        True,
        "enabled by Ray's ~/.ray/config.json of ray_config_files",  # root's own file
    )
    assert [c.file.untrusted_owner for c in configs] == [NOBODY, NOBODY, None]
