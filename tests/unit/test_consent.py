"""Consent: every layer, every conflict between layers, every malformed value."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from usagestatsd.config.settings import Settings
from usagestatsd.consent.decision import (
    ConsentFileError,
    decide,
    read_consent_file,
    write_consent_file,
)
from usagestatsd.contract.fieldsets import CURRENT_VERSION

# (disable flag, RAY_USAGE_STATS_ENABLED, DO_NOT_TRACK, config file content,
#  interactive answer or None) -> (enabled, deciding layer)
CASES = [
    (True, "1", None, '{"usage_stats": true}', None, False, "command line"),
    (False, "1", "1", '{"usage_stats": false}', None, True, "RAY_USAGE_STATS_ENABLED"),
    (False, "0", None, '{"usage_stats": true}', None, False, "RAY_USAGE_STATS_ENABLED"),
    (False, "yes", None, '{"usage_stats": true}', None, False, "RAY_USAGE_STATS_ENABLED"),
    (False, "", None, None, None, False, "RAY_USAGE_STATS_ENABLED"),
    (False, None, "1", '{"usage_stats": true}', None, False, "DO_NOT_TRACK"),
    (False, None, "true", None, None, False, "DO_NOT_TRACK"),
    (False, None, "0", '{"usage_stats": true}', None, True, "config file"),
    (False, None, None, '{"usage_stats": false}', True, False, "config file"),
    (False, None, None, '{"usage_stats": true}', False, True, "config file"),
    (False, None, None, "not json", True, False, "config file"),
    (False, None, None, "[1, 2]", True, False, "config file"),
    (False, None, None, '{"usage_stats": "yes"}', True, False, "config file"),
    (False, None, None, '{"other": 1}', False, False, "prompt"),
    (False, None, None, "", True, True, "prompt"),
    (False, None, None, None, None, True, "default"),
    (False, None, None, "{}", None, True, "default"),
]


@pytest.mark.parametrize(("flag", "env", "dnt", "content", "answer", "enabled", "layer"), CASES)
def test_layers_in_order(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    flag: bool,
    env: str | None,
    dnt: str | None,
    content: str | None,
    answer: bool | None,
    enabled: bool,
    layer: str,
) -> None:
    """The first layer that decides wins, whatever the later layers say."""
    consent = tmp_path / "config.json"
    if content is not None:
        consent.write_text(content)
    environ = {"RAY_USAGE_STATS_CONFIG_PATH": str(consent)}
    if env is not None:
        environ["RAY_USAGE_STATS_ENABLED"] = env
    if dnt is not None:
        environ["DO_NOT_TRACK"] = dnt
    settings = make_settings(environ, disable_usage_stats="true" if flag else None)
    asked: list[bool] = []

    def prompt() -> bool:
        asked.append(True)
        return bool(answer)

    decision = decide(settings, read_consent_file(consent), answer is not None, prompt)
    assert (decision.enabled, decision.layer) == (enabled, layer)
    assert asked == ([True] if layer == "prompt" else [])
    assert decision.how_to_change


def test_invalid_env_value_is_an_error_naming_it(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """RAY_USAGE_STATS_ENABLED=yes disables, and the error names variable, value, accepted."""
    settings = make_settings({"RAY_USAGE_STATS_ENABLED": "yes"})
    decision = decide(settings, read_consent_file(tmp_path / "none.json"), False)
    assert decision.error is not None
    for part in ("RAY_USAGE_STATS_ENABLED", "'yes'", "1", "0"):
        assert part in decision.error


def test_settings_file_disable_names_the_file(tmp_path: Path) -> None:
    """disable_usage_stats = true in the settings file is named as the deciding layer."""
    from usagestatsd.config.settings import load_settings

    path = tmp_path / "s.toml"
    path.write_text("disable_usage_stats = true\n")
    decision = decide(
        load_settings({"RAY_USAGE_STATS_ENABLED": "1"}, {}, path),
        read_consent_file(tmp_path / "none.json"),
        False,
    )
    assert not decision.enabled
    assert decision.layer == "settings file" and str(path) in decision.where


def test_prompt_suppressed_by_env(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """RAY_USAGE_STATS_PROMPT_ENABLED=0: no prompt even on a terminal; the default applies."""
    settings = make_settings({"RAY_USAGE_STATS_PROMPT_ENABLED": "0"})
    decision = decide(
        settings, read_consent_file(tmp_path / "none.json"), True, lambda: pytest.fail("prompted")
    )
    assert decision.layer == "default" and decision.enabled


def test_broken_file_is_never_rewritten(tmp_path: Path) -> None:
    """write_consent_file refuses a file that is not a JSON object, leaving it untouched."""
    path = tmp_path / "config.json"
    path.write_text("[not, an, object")
    with pytest.raises(ConsentFileError):
        write_consent_file(path, False)
    assert path.read_text() == "[not, an, object"


def test_write_keeps_other_keys_and_creates_directory(tmp_path: Path) -> None:
    """disable/enable change only usage_stats; the directory is created if needed."""
    path = tmp_path / ".ray" / "config.json"
    write_consent_file(path, True)
    data = json.loads(path.read_text())
    data["theme"] = "dark"
    path.write_text(json.dumps(data))
    write_consent_file(path, False)
    assert json.loads(path.read_text()) == {
        "theme": "dark",
        "usage_stats": False,
        "usage_stats_fields_version": CURRENT_VERSION,
    }


def test_unreadable_file_disables(tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    """A consent path that is a directory counts as broken: disabled, with an error."""
    (tmp_path / "config.json").mkdir()
    decision = decide(make_settings(), read_consent_file(tmp_path / "config.json"), False)
    assert not decision.enabled and decision.error is not None
