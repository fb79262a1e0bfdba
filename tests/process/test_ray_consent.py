"""Ray's own opt-out (`ray disable-usage-stats`) is honoured beside the daemon's consent file."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.hostile import NOBODY, as_user, needs_root, open_dir
from tests.support.processes import daemon_env, run_cli
from tests.support.servers import ScriptedEndpoint
from usagestatsd.config.settings import Settings
from usagestatsd.consent.decision import ConsentFile, decide, read_consent_file
from usagestatsd.consent.ray_files import (
    ROOT_ABSENT,
    ROOT_CREDENTIAL,
    RayConfig,
    ray_config_paths,
    read_ray_configs,
)

# What `ray disable-usage-stats` / `ray enable-usage-stats` write (Ray 2.60).
RAY_NO = '{"usage_stats": false}'
RAY_YES = '{"usage_stats": true}'


def _with_ray_files(
    make_settings: Callable[..., Settings], tmp_path: Path, *contents: str | None
) -> Settings:
    paths = []
    for i, content in enumerate(contents):
        path = tmp_path / f"user{i}" / ".ray" / "config.json"
        path.parent.mkdir(parents=True)
        if content is not None:
            path.write_text(content)
        paths.append(str(path))
    return make_settings(
        {
            "USAGESTATSD_RAY_CONFIG_FILES": " ".join(paths),
            "RAY_USAGE_STATS_CONFIG_PATH": str(tmp_path / "consent.json"),
        }
    )


@pytest.mark.parametrize(
    ("own", "ray", "enabled", "layer"),
    [
        (None, (None, RAY_NO), False, "Ray config file"),
        ('{"usage_stats": true}', (RAY_NO, None), False, "Ray config file"),
        ('{"usage_stats": false}', (RAY_YES, None), False, "config file"),
        (None, (RAY_YES, None), True, "Ray config file"),
        ('{"usage_stats": true}', (RAY_YES, None), True, "config file"),
        (None, ("not json", None), False, "Ray config file"),
        (None, (None, None), True, "default"),
    ],
)
def test_any_no_means_no(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    own: str | None,
    ray: tuple[str | None, str | None],
    enabled: bool,
    layer: str,
) -> None:
    """The consent file and every Ray user's config: one false (or one broken) disables."""
    settings = _with_ray_files(make_settings, tmp_path, *ray)
    if own is not None:
        settings.consent_file.write_text(own)
    decision = decide(
        settings, read_consent_file(settings.consent_file), False, None, read_ray_configs(settings)
    )
    assert (decision.enabled, decision.layer) == (enabled, layer)
    assert len(decision.consulted) == 6


def test_ray_yes_accepts_only_rays_field_set(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """`ray enable-usage-stats` consents to Ray's own fields (version 1), not to ours."""
    settings = _with_ray_files(make_settings, tmp_path, RAY_YES)
    decision = decide(
        settings, read_consent_file(settings.consent_file), False, None, read_ray_configs(settings)
    )
    assert decision.enabled and decision.accepted_fields_version == 1


def test_unreadable_ray_config_says_nothing(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """A Ray user's file the daemon may not read (another user's home) does not decide."""
    settings = make_settings({"RAY_USAGE_STATS_CONFIG_PATH": str(tmp_path / "c.json")})
    blocked = ConsentFile(Path("/root/.ray/config.json"), True, None, "x", unreadable=True)
    own = read_consent_file(settings.consent_file)
    decision = decide(settings, own, False, None, [RayConfig("root", blocked)])
    assert decision.enabled and decision.layer == "default"


def test_automatic_list_is_root_the_daemon_user_and_the_temp_root_owner(
    make_settings: Callable[..., Settings], temp_root: Path
) -> None:
    """Without ray_config_files: root's, the daemon's user's, the temp root owner's (deduped)."""
    settings = make_settings({"USAGESTATSD_RAY_CONFIG_FILES": "auto"})
    if temp_root.stat().st_uid != 0:
        pytest.skip("the temp root must belong to root here (tests run as root)")
    paths = ray_config_paths(settings, euid=0)
    assert paths == [("root", Path(pwd.getpwuid(0).pw_dir) / ".ray" / "config.json")]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run `status` as another uid")
async def test_status_and_daemon_obey_ray_disable(
    temp_root: Path, state_dir: Path, tmp_path: Path, endpoint: ScriptedEndpoint
) -> None:
    """`ray disable-usage-stats` by Ray's user: status says disabled and why; run sends nothing."""
    ray_home = tmp_path / "rayuser"
    (ray_home / ".ray").mkdir(parents=True)
    (ray_home / ".ray" / "config.json").write_text(RAY_NO)
    consent = tmp_path / "consent.json"
    consent.write_text('{"usage_stats": true}')
    env = daemon_env(temp_root, state_dir, endpoint.url)
    del env["RAY_USAGE_STATS_ENABLED"]
    env["RAY_USAGE_STATS_CONFIG_PATH"] = str(consent)
    env["USAGESTATSD_RAY_CONFIG_FILES"] = str(ray_home / ".ray" / "config.json")
    code, out, _ = await run_cli(["status", "--config", "/dev/null", "--json"], env)
    info = json.loads(out)
    assert code == 3 and info["enabled"] is False
    assert info["decided_by"]["layer"] == "Ray config file"
    assert "ray enable-usage-stats" in info["how_to_change"]
    run = subprocess.run(
        [sys.executable, "-m", "usagestatsd", "run", "--config", "/dev/null"],
        env={**os.environ, **env},
        capture_output=True,
        timeout=30,
    )
    assert run.returncode == 0 and b"consent.disabled" in run.stderr
    assert endpoint.received == []


@needs_root
@pytest.mark.parametrize(
    ("credential", "expected"),
    [
        (RAY_NO, "False|Ray config file|True|None"),  # root ran `ray disable-usage-stats`
        (ROOT_ABSENT.decode(), "True|default|False|None"),  # root has no config.json
        (None, "True|default|True|cannot be read (Permission denied)"),  # not under systemd
    ],
)
def test_roots_ray_opt_out_reaches_a_service_run_as_another_user(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    credential: str | None,
    expected: str,
) -> None:
    """The service as Ray's user (here nobody) cannot open /root: root's ~/.ray/config.json
    reaches it as the credential systemd reads for it (the unit's LoadCredential=)."""
    settings = make_settings(
        {"USAGESTATSD_RAY_CONFIG_FILES": "auto", "RAY_USAGE_STATS_CONFIG_PATH": "/nonexistent/c"}
    )
    credentials = open_dir() / "credentials"
    credentials.mkdir()
    if credential is not None:
        (credentials / ROOT_CREDENTIAL).write_text(credential)
        os.chown(credentials / ROOT_CREDENTIAL, NOBODY, NOBODY)
    os.chown(credentials, NOBODY, NOBODY)

    def decide_as_the_service() -> str:
        if credential is not None:
            os.environ["CREDENTIALS_DIRECTORY"] = str(credentials)
        configs = read_ray_configs(settings)
        [root] = [c for c in configs if c.whose == "root"]
        assert root.file.path == Path("/root/.ray/config.json")
        decision = decide(settings, read_consent_file(settings.consent_file), False, None, configs)
        return f"{decision.enabled}|{decision.layer}|{root.file.exists}|{root.file.problem}"

    assert as_user(decide_as_the_service) == expected
