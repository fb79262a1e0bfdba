"""A declared setting's command-line flag, as argparse takes it.

Both command lines, the daemon's and the collector's, derive their setting flags from the
declarations through this one function, so a flag's name, choices and help are written
once, beside the setting.
"""

from __future__ import annotations

import argparse

from usagestatsd.config.declare import Declaration


def add_flag(parser: argparse.ArgumentParser, d: Declaration) -> None:
    """The flag a setting declares (the daemon's and the collector's alike)."""
    flag, name = d.flag, d.flag_name
    if flag is None or name is None:
        return
    text = f"{flag.help} (default {d.default})" if flag.show_default else flag.help
    if flag.switch:
        # default None: absent is "not said", so a lower layer still counts
        parser.add_argument(name, dest=d.name, action="store_true", default=None, help=text)
        return
    parser.add_argument(
        name,
        dest=d.name,
        action="append" if flag.repeat else "store",
        choices=d.choices,
        metavar=flag.metavar,
        help=text,
    )
