"""The man page lists every command and option of the command line, and nothing else."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from usagestatsd.cli.commands import build_parser

MAN = Path(__file__).parents[2] / "docs" / "usagestatsd.8"
ALTERNATING = {"BR", "RB", "IR", "RI", "BI", "IB"}
# Ray's own options, named where the man page says how to start Ray.
RAY_OPTIONS = {"--head"}
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z-]*")


def _text(line: str) -> str:
    """One roff source line as the words it shows (fonts and escapes dropped)."""
    if line.startswith('.\\"'):
        return ""
    if line.startswith("."):
        macro, _, rest = line[1:].partition(" ")
        try:
            args = shlex.split(rest.replace("\\ ", "\0"), posix=True)
        except ValueError:
            args = rest.split()
        joiner = "" if macro in ALTERNATING else " "
        line = joiner.join(args) if macro in ALTERNATING | {"B", "I", "SY", "TP", "TQ"} else ""
        if macro == "SY":
            line = ".SY " + line
    line = re.sub(r"\\f[BIRP]", "", line).replace("\\-", "-").replace("\0", " ")
    return line.replace("\\(bu", "*").replace("\\e", "\\")


def _rendered() -> list[str]:
    return [_text(line) for line in MAN.read_text().splitlines()]


def _section(lines: list[str], name: str) -> str:
    out, inside = [], False
    for raw, text in zip(MAN.read_text().splitlines(), lines, strict=True):
        if raw.startswith(".SH"):
            inside = raw.split(None, 1)[1].strip('"') == name
            continue
        if inside:
            out.append(text)
    return "\n".join(out)


def _parser_commands() -> dict[str, set[str]]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {
        name: {o for a in p._actions for o in a.option_strings if o not in ("-h", "--help")}
        for name, p in sub.choices.items()
    }


def _synopsis() -> dict[str, set[str]]:
    """Each command of the SYNOPSIS with the options its block shows ('options': common)."""
    raw = MAN.read_text().split(".SH SYNOPSIS", 1)[1].split(".SH ", 1)[0]
    common = {"--config", "--log-format", "--log-level", "--temp-root", "--state-dir"}
    found: dict[str, set[str]] = {}
    for block in raw.split(".SY usagestatsd")[1:]:
        text = " ".join(_text(line) for line in block.split(".YS")[0].splitlines())
        names = [w.strip("[]") for w in text.split() if not w.startswith(("-", "[-"))]
        options = set(OPTION.findall(text))
        if "options" in names:
            options |= common
        for name in names:
            if re.fullmatch(r"[a-z][a-z-]*", name) and name not in ("options", "url", "seconds"):
                found.setdefault(name, set()).update(options)
    return found


def test_synopsis_matches_the_parser() -> None:
    """Every command of the parser is in the SYNOPSIS with exactly its options."""
    expected = _parser_commands()
    shown = {k: v for k, v in _synopsis().items() if k in expected}
    assert set(shown) == set(expected), "commands missing from the SYNOPSIS"
    for name, options in expected.items():
        assert shown[name] == options, f"{name}: SYNOPSIS shows {shown[name]}, parser {options}"


def test_every_command_is_described() -> None:
    """COMMANDS has an entry for every command (and --version, --help)."""
    commands = _section(_rendered(), "COMMANDS")
    for name in [*_parser_commands(), "--version", "--help"]:
        assert re.search(rf"^{re.escape(name)}(\s|$)", commands, re.M), f"{name} not described"


def test_every_option_is_described_and_none_is_invented() -> None:
    """Each option appears in COMMANDS or OPTIONS; each --word of the page exists."""
    lines = _rendered()
    described = _section(lines, "COMMANDS") + _section(lines, "OPTIONS")
    real = set().union(*_parser_commands().values()) | {"--version", "--help"}
    for option in real:
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", described), option
    invented = set(OPTION.findall("\n".join(lines))) - real - RAY_OPTIONS
    assert not invented, f"the man page names options the parser lacks: {invented}"


@pytest.mark.parametrize("name", sorted(_parser_commands()))
def test_help_lists_every_command_and_option(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`usagestatsd --help` names every command; `usagestatsd CMD --help` every option."""
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    top = capsys.readouterr().out
    assert re.search(rf"^\s+{re.escape(name)}\s+\S", top, re.M), f"{name} has no help line"
    with pytest.raises(SystemExit):
        parser.parse_args([name, "--help"])
    text = capsys.readouterr().out
    for option in _parser_commands()[name]:
        assert option in text
