"""The command line's grammar: the commands, their options, and the settings' flags.

The flags that set a setting (--log-level, --temp-root, --interval, ...) are derived from
the declarations in config/settings.py: their names, choices, help and defaults are written there
once, and an error about a value names the flag as it is declared here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from usagestatsd import __version__
from usagestatsd.config.flags import add_flag
from usagestatsd.config.settings import DECLARED


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help="settings file (default /etc/usagestatsd/usagestatsd.toml)",
    )
    _setting_flags(parser, run_only=False)


def _setting_flags(parser: argparse.ArgumentParser, run_only: bool) -> None:
    """The flags config/settings.py declares: those of every command, or those of `run` only."""
    # Flags with a fixed set of values (switches, choices) come first in --help.
    for d in sorted(DECLARED, key=lambda d: not (d.choices or (d.flag and d.flag.switch))):
        if d.flag is not None and d.flag.run_only == run_only:
            add_flag(parser, d)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command."""
    parser = argparse.ArgumentParser(
        prog="usagestatsd",
        description="Collect anonymous Ray usage statistics and report them hourly.",
    )
    parser.add_argument("--version", action="version", version=f"usagestatsd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon (the default)")
    _common(run)
    _setting_flags(run, run_only=True)
    run.add_argument(
        "--daemonize",
        action="store_true",
        help="detach from the terminal (for init systems other than systemd)",
    )
    run.add_argument("--pidfile", type=Path, metavar="PATH", help="with --daemonize: pid file")

    preview = commands.add_parser("preview", help="print the report that would be sent now")
    _common(preview)

    status = commands.add_parser("status", help="say whether collection is on, and why")
    _common(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")

    history = commands.add_parser("history", help="list the reports sent (and their bytes)")
    _common(history)
    history.add_argument("--json", action="store_true", help="one JSON object per record")
    history.add_argument("--last", type=int, metavar="N", help="only the last N records")
    history.add_argument("--session", metavar="ID", help="only records of this session_id")
    history.add_argument(
        "--raw", action="store_true", help="print exactly the bytes that were sent, nothing else"
    )

    forget = commands.add_parser("forget", help="list reported sessions; request deletion")
    _common(forget)
    which = forget.add_mutually_exclusive_group()
    which.add_argument("--session", metavar="ID", help="request deletion of this session_id")
    which.add_argument("--all", action="store_true", help="request deletion of every session")

    for name, word in (("enable", "enable"), ("disable", "disable")):
        cmd = commands.add_parser(name, help=f"{word} collection (takes effect on restart)")
        _common(cmd)

    setup = commands.add_parser(
        "setup", help="find the running Ray; say what is missing and how to fix it"
    )
    _common(setup)
    setup.add_argument(
        "--apply", action="store_true", help="write the systemd drop-ins and start the provider"
    )

    demo = commands.add_parser("demo", help="show reports flowing from a demo Ray session")
    demo.add_argument("--interval", type=float, default=5.0, metavar="SECONDS")
    cluster = commands.add_parser("demo-cluster", help="serve a demo Ray session (recorded)")
    cluster.add_argument("--temp-root", type=Path, default=Path("/tmp/ray"))
    receiver = commands.add_parser("demo-receiver", help="print reports POSTed to 127.0.0.1")
    receiver.add_argument("--port", type=int, default=18931)
    return parser


def cli_overrides(args: argparse.Namespace) -> dict[str, object]:
    """Setting name -> the text its flag was given (None: not given), as config/settings.py reads
    it."""
    given: dict[str, object] = {}
    for d in DECLARED:
        if d.flag is None:
            continue
        value = getattr(args, d.name, None)
        if d.flag.switch:
            value = "true" if value else None
        elif d.flag.repeat:
            value = " ".join(value) if value else None
        given[d.name] = value
    return given
