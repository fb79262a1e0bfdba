"""Settings, consent and cluster-config files that are broken, huge, odd files or symlinks."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.faults.helpers import named
from tests.support.hostile import as_user
from usagestatsd.cli.commands import EXIT_CONFIG, main
from usagestatsd.config.settings import Settings
from usagestatsd.consent.decision import decide, read_consent_file
from usagestatsd.facts.cluster import read_cluster_config
from usagestatsd.facts.sources import SourceError
from usagestatsd.store.state import StateStore

BIG = b"# " + b"x" * (2 << 20) + b"\n"


def plant(path: Path, kind: str, target: Path) -> None:
    """Make `path` a broken file of the given kind (`target` is where a symlink points)."""
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        target.write_text("{}")
        path.symlink_to(target)
    elif kind == "dangling symlink":
        path.symlink_to(target.with_name("nowhere"))
    elif kind == "huge":
        path.write_bytes(BIG)
    else:
        path.write_bytes(kind.encode())


SETTINGS_CASES = {
    "not TOML": "this is = not [valid toml",
    "not UTF-8": "temp_root = '\udcff'",
    "wrong type": "report_interval_s = 'hourly'",
    "out of range": "report_interval_s = -5",
    "NaN": "report_interval_s = nan",
    "unknown key": "favourite_colour = 'blue'",
    "wrong table": "[retry]\nmax_attempts = [1, 2]",
    "bad URL": "[[endpoints]]\nurl = 'http://example.com/'",
    "directory": "",
    "huge": "",
    "dangling symlink": "",
}


@pytest.mark.parametrize("kind", list(SETTINGS_CASES))
def test_bad_settings_file_exits_78_naming_it(
    tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A settings file that cannot be used stops start-up with exit 78 and names the file."""
    path = tmp_path / "usagestatsd.toml"
    content = SETTINGS_CASES[kind]
    if content:
        path.write_bytes(content.encode("utf-8", "surrogateescape"))
    else:
        plant(path, kind, tmp_path / "target")
    env = {"HOME": str(tmp_path), "USAGESTATSD_STATE_DIR": str(tmp_path / "state")}
    assert main(["run", "--config", str(path)], env) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"settings file {path}" in err or "command line" in err
    assert err.count("\n") == 1


def test_settings_fifo_does_not_hang(tmp_path: Path) -> None:
    """A settings path that is a FIFO is refused at once (a real process, with a deadline)."""
    path = tmp_path / "usagestatsd.toml"
    os.mkfifo(path)
    done = subprocess.run(
        [sys.executable, "-m", "usagestatsd", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=20,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)},
    )
    assert done.returncode == EXIT_CONFIG
    assert f"settings file {path}" in done.stderr


def test_settings_symlink_is_followed(tmp_path: Path) -> None:
    """/etc is root's: a settings file that is a symlink (config management) is read."""
    real = tmp_path / "real.toml"
    real.write_text("report_interval_s = 120\n")
    link = tmp_path / "usagestatsd.toml"
    link.symlink_to(real)
    from usagestatsd.config.settings import load_settings

    assert load_settings({}, {}, link).report_interval_s == 120


ENV_CASES = {
    "RAY_USAGE_STATS_REPORT_INTERVAL_S": "1e999",
    "RAY_USAGE_STATS_REPORT_URL": "http://203.0.113.9/",
    "RAY_USAGE_STATS_EXTRA_TAGS": "a=b;no-equals-sign",
    "USAGESTATSD_TEMP_ROOT": "relative/path",
    "USAGESTATSD_SOCKET_MAX_BYTES": "12 MB",
    "USAGESTATSD_RETRY_MAX_ATTEMPTS": "true",
}


@pytest.mark.parametrize(("name", "value"), list(ENV_CASES.items()))
def test_bad_environment_exits_78_naming_the_variable(
    tmp_path: Path, name: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad environment value stops start-up with exit 78, naming the variable."""
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    env = {"HOME": str(tmp_path), name: value}
    assert main(["run", "--config", str(empty)], env) == EXIT_CONFIG
    assert f"environment variable {name}" in capsys.readouterr().err


CONSENT_CASES = [
    "not JSON",
    '"usage_stats"',
    '{"usage_stats": "yes"}',
    '{"usage_stats": 1}',
    "[true]",
    '{"usage_stats": true' + "," * 100_000,
    "directory",
    "fifo",
    "huge",
    "symlink",
    "\udcff\udcfe",
]


@pytest.mark.parametrize("kind", CONSENT_CASES, ids=range(len(CONSENT_CASES)))
def test_broken_consent_file_disables_with_an_error(
    tmp_path: Path, make_settings: Callable[..., Settings], kind: str
) -> None:
    """A consent file that cannot be read as Ray's JSON disables collection and says why."""
    path = tmp_path / "config.json"
    if kind in ("directory", "fifo", "huge", "symlink"):
        plant(path, kind, tmp_path / "target.json")
        if kind == "huge":
            path.write_text('{"usage_stats": true, "pad": "' + "x" * (1 << 20) + '"}')
    else:
        path.write_bytes(kind.encode("utf-8", "surrogateescape"))
    consent = read_consent_file(path)
    assert consent.problem
    decision = decide(make_settings({"RAY_USAGE_STATS_CONFIG_PATH": str(path)}), consent, False)
    assert not decision.enabled
    assert decision.error is not None and str(path) in decision.error
    if kind == "symlink":
        assert (tmp_path / "target.json").read_text() == "{}"


def test_broken_consent_file_sends_nothing(tmp_path: Path) -> None:
    """The daemon with a broken consent file logs consent.invalid and exits 0: no traffic."""
    path = tmp_path / "config.json"
    path.write_text("{broken")
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    env = {
        "HOME": str(tmp_path),
        "RAY_USAGE_STATS_CONFIG_PATH": str(path),
        "USAGESTATSD_TEMP_ROOT": str(tmp_path / "ray"),
        "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/",
        "PATH": os.environ.get("PATH", ""),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "usagestatsd",
            "run",
            "--log-format",
            "json",
            "--config",
            str(empty),
        ],
        capture_output=True,
        text=True,
        timeout=20,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0
    assert '"consent.invalid"' in done.stderr and str(path) in done.stderr
    assert "daemon.started" not in done.stderr
    assert path.read_text() == "{broken"  # never rewritten


CLUSTER_CONFIG_CASES = {
    "not YAML": "provider: [unclosed\n  - : :",
    "not a mapping": "- just\n- a list\n",
    "wrong types": "provider: {type: 5}\nmin_workers: many\n",
    "negative": "provider: {type: aws}\nmin_workers: -1\n",
    "huge number": "provider: {type: aws}\nmax_workers: 1e400\n",
    "python tag": "provider: !!python/object/apply:os.system ['touch {canary}']\n",
    "billion laughs": "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(
        f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, n in zip("abcdefgh", "bcdefghi", strict=True)
    )
    + "min_workers: *i\n",
    "not UTF-8": "provider: {type: \udcff}\n",
    "directory": "",
    "fifo": "",
    "huge": "",
    "symlink": "",
    "dangling symlink": "",
}


@pytest.mark.parametrize("kind", list(CLUSTER_CONFIG_CASES))
async def test_bad_cluster_config_is_one_named_problem(tmp_path: Path, kind: str) -> None:
    """A broken ~/ray_bootstrap_config.yaml is one problem naming the file; nothing runs."""
    path = tmp_path / "ray_bootstrap_config.yaml"
    canary = tmp_path / "canary"
    content = CLUSTER_CONFIG_CASES[kind].replace("{canary}", str(canary))
    if content:
        path.write_bytes(content.encode("utf-8", "surrogateescape"))
    else:
        plant(path, kind, tmp_path / "target.yaml")
    problems: list[SourceError] = []
    facts = await read_cluster_config(path, False, False, problems)
    if kind == "dangling symlink":
        # Absent is normal (no autoscaler); a dangling link is treated as absent too.
        assert problems == [] or problems[0].source == f"cluster config file {path}"
    else:
        assert [p.source for p in problems] == [f"cluster config file {path}"], problems
        assert problems[0].problem
    assert facts.cloud_provider == "unknown" and facts.min_workers is None
    assert not canary.exists()


@pytest.mark.parametrize("kind", ["not JSON", "symlink", "huge", "directory", "[1, 2]"])
def test_unusable_state_file_is_set_aside(tmp_path: Path, kind: str) -> None:
    """A broken state.json is moved aside with one warning and the daemon starts afresh."""
    from usagestatsd.base.sdnotify import Notifier
    from usagestatsd.config.settings import load_settings
    from usagestatsd.contract.guard import KnownIdentifiers
    from usagestatsd.cycle.pipeline import Disclosure
    from usagestatsd.service.process import build_daemon

    state_dir = tmp_path / "state"
    state_dir.mkdir()
    path = state_dir / "state.json"
    victim = tmp_path / "victim.json"
    if kind in ("symlink", "huge", "directory"):
        plant(path, kind, victim)
    else:
        path.write_text(kind)
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    settings = load_settings({"USAGESTATSD_STATE_DIR": str(state_dir)}, {}, empty)
    with capture_logs() as events:
        daemon = build_daemon(settings, Notifier(None), Disclosure(KnownIdentifiers()))
    [event] = named(events, "state.unreadable")
    assert str(path) in event["problem"]
    assert daemon.reporter.cycle.state.session is None
    if kind == "symlink":
        assert victim.read_text() == "{}"
    StateStore(state_dir).save(daemon.reporter.cycle.state)
    assert StateStore(state_dir).load().session is None


def test_unreadable_files(tmp_path: Path) -> None:
    """Files the daemon's user may not read: settings stop start-up, consent disables."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to another user")
    os.chmod(tmp_path, 0o755)
    settings_file = tmp_path / "usagestatsd.toml"
    settings_file.write_text("report_interval_s = 60\n")
    consent = tmp_path / "config.json"
    consent.write_text('{"usage_stats": true}')
    for path in (settings_file, consent):
        path.chmod(0o600)
    from usagestatsd.config.settings import load_settings

    def load() -> str:
        load_settings({}, {}, settings_file)
        return "loaded"

    assert as_user(load) == (
        f"SettingsError: invalid setting config from settings file {settings_file}: "
        "'Permission denied' is not accepted; expected a readable file"
    )
    assert as_user(lambda: str(read_consent_file(consent).problem)) == (
        "cannot be read (Permission denied)"
    )
