"""`usagestatsd-collector copy --from SQLITE [--to DSN | --to-file FILE] [--merge]`.

The target is found as `serve` finds its database (the settings file, the environment, a
systemd credential, `--to-file`), so a password need never be on the command line: a DSN
given with `--to` that holds one is refused. Prints one line of counts per table.

Exit codes: 0 copied (or nothing left to copy); 1 the copy failed or was refused; 78 the
settings are wrong or the PostgreSQL driver is missing.
"""

from __future__ import annotations

import argparse
import os
import sys
from urllib.parse import urlsplit

from usagestatsd.collector.copy_store import CopyRefused, copy_store, open_source
from usagestatsd.collector.migrations import SchemaTooNew
from usagestatsd.collector.settings import (
    EXIT_SETTINGS,
    CollectorSettings,
    database_problem,
    load_settings,
)
from usagestatsd.collector.store_postgres import DriverMissing, PostgresStore
from usagestatsd.config.settings import SettingsError


def _fail(text: str, code: int = 1) -> int:
    print(f"usagestatsd-collector copy: {text}", file=sys.stderr)
    return code


def _target(args: argparse.Namespace) -> CollectorSettings | str:
    """The settings naming the target, or why they will not do."""
    if args.to and urlsplit(args.to).password:
        return "--to holds a password, which `ps` shows: put the DSN in a file (--to-file)"
    cli = {"database_url": args.to, "database_url_file": args.to_file}
    try:
        settings = load_settings(os.environ, cli, args.config)
    except SettingsError as exc:
        return str(exc)
    if settings.backend != "postgresql":
        return "the target must be a postgresql:// DSN (--to, --to-file, or database_url)"
    return settings


def copy_command(args: argparse.Namespace) -> int:
    """Run the copy; the exit status."""
    settings = _target(args)
    if isinstance(settings, str):
        return _fail(settings, EXIT_SETTINGS)
    try:
        source = open_source(args.source)
    except (CopyRefused, SchemaTooNew) as exc:
        return _fail(str(exc))
    try:
        # Migrating through the store takes the same lock as a collector starting.
        store = PostgresStore(settings.database)
    except DriverMissing as exc:
        source.close()
        return _fail(str(exc), EXIT_SETTINGS)
    except Exception as exc:
        source.close()
        return _fail(f"cannot open the target: {database_problem(exc, settings)}")
    try:
        store.migrate()
        counts = copy_store(source, store.write_connection, args.merge)
    except CopyRefused as exc:
        return _fail(str(exc))
    except Exception as exc:
        return _fail(f"copy failed: {database_problem(exc, settings)}")
    finally:
        store.close()
        source.close()
    for line in counts.lines():
        print(line)
    print(f"copied from {args.source} into PostgreSQL; running it again copies nothing twice")
    return 0
