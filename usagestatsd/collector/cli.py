"""`usagestatsd-collector serve`: settings, logs, storage, then the HTTP server until SIGTERM.

Exit codes: 0 clean stop; 1 runtime failure (port taken, database unreachable); 2 bad usage;
78 invalid configuration (one message naming the setting).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import resource
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import structlog
from aiohttp import web

from usagestatsd import __version__
from usagestatsd.base import logs
from usagestatsd.base.hostport import host_port
from usagestatsd.base.sdnotify import Notifier
from usagestatsd.collector.app import Collector
from usagestatsd.collector.listener import IDLE_DEADLINE_S, Listener
from usagestatsd.collector.migrations import SchemaTooNew
from usagestatsd.collector.settings import (
    DECLARED,
    EXIT_SETTINGS,
    CollectorSettings,
    database_problem,
    load_settings,
)
from usagestatsd.collector.store import DAY_MS, SqlStore
from usagestatsd.collector.store_postgres import DriverMissing
from usagestatsd.config.flags import add_flag
from usagestatsd.config.settings import SettingsError

EXIT_CONFIG = EXIT_SETTINGS  # sysexits EX_CONFIG: systemd does not restart it
RETENTION_EVERY_S = 3600.0
FD_RESERVE = 64  # descriptors kept for the database, the log and the listening socket
log = structlog.get_logger()


class _WithholdAddresses(logging.Filter):
    """aiohttp logs a failed request with the peer's address (and the exception's text can
    quote its headers). Those records are replaced by one event naming the error kind only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiohttp"):
            return True
        error = record.exc_info[1] if record.exc_info else None
        log.error(
            "http.request_failed",
            error=type(error).__name__ if error else record.levelname.lower(),
            detail="address, headers and body withheld",
        )
        return False


def _withhold_addresses() -> None:
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WithholdAddresses())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="usagestatsd-collector",
        description="Receive Ray usage reports, honour deletion requests, show the fleet.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the collector (HTTP on --listen)")
    serve.add_argument("--config", type=Path, help="settings file (TOML)")
    for d in DECLARED:  # the flags the settings declare, in their order
        add_flag(serve, d)
        if d.name == "database_url":  # a file holding that secret: not a setting of its own
            serve.add_argument(
                "--database-url-file", help="read the database URL from this file (mode 0600)"
            )
    copy = commands.add_parser(
        "copy", help="copy a SQLite store into PostgreSQL (run again: copies nothing twice)"
    )
    copy.add_argument("--from", dest="source", type=Path, required=True, help="SQLite file")
    copy.add_argument(
        "--to", help="postgresql:// DSN without a password (default: the configured database)"
    )
    copy.add_argument("--to-file", help="read the target DSN from this file (mode 0600)")
    copy.add_argument("--config", type=Path, help="settings file naming the target database")
    copy.add_argument(
        "--merge", action="store_true", help="add to a target that already holds other data"
    )
    return parser


def open_store(settings: CollectorSettings) -> SqlStore:
    """The configured backend, migrated to the latest schema."""
    store: SqlStore
    if settings.backend == "sqlite":
        from usagestatsd.collector.store_sqlite import SqliteStore

        store = SqliteStore(settings.sqlite_path)
    else:
        from usagestatsd.collector.store_postgres import PostgresStore

        store = PostgresStore(settings.database)
    try:
        store.migrate()
    except BaseException:
        store.close()
        raise
    return store


def _server(runner: web.AppRunner) -> web.Server:
    assert runner.server is not None  # set up before the first connection is accepted
    return runner.server


def _connection_cap(wanted: int) -> int:
    """`max_connections`, within the descriptors the process may open.

    The soft limit is raised to the hard one (systemd's LimitNOFILE= sets both); what is
    left after a reserve for the database and the log is the most connections held at once,
    so accepting never runs out of descriptors.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted + FD_RESERVE and soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    cap = min(wanted, soft - FD_RESERVE)
    if cap < wanted:
        log.warning(
            "collector.connections_capped",
            max_connections=wanted,
            cap=cap,
            open_files_limit=soft,
            hint="raise LimitNOFILE= (the unit sets 8192)",
        )
    return max(cap, 1)


async def _retention(collector: Collector, days: int) -> None:
    while True:
        cutoff = int(time.time() * 1000) - days * DAY_MS
        try:
            removed = await collector.writer.call(
                functools.partial(SqlStore.expire, cutoff_ms=cutoff)
            )
        except Exception as exc:
            log.error("retention.failed", error=type(exc).__name__)
        else:
            collector.metrics.expired_reports += removed
            if removed:
                log.info("retention.expired", reports=removed, retention_days=days)
        await asyncio.sleep(RETENTION_EVERY_S)


async def serve(settings: CollectorSettings, store: SqlStore) -> int:
    """Serve until SIGTERM or SIGINT; returns the exit status."""
    from usagestatsd.collector.writer import Writer

    loop = asyncio.get_running_loop()
    writer = Writer(store, loop)
    collector = Collector(settings, store, writer)
    app = collector.app()
    listener = Listener(lambda: _server(runner)(), _connection_cap(settings.max_connections))
    app.middlewares.append(listener.middleware)
    # No access log: no addresses. aiohttp's own keep-alive timer agrees with ours.
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=IDLE_DEADLINE_S)
    await runner.setup()
    host, port = settings.listen
    notifier = Notifier(settings.notify_socket)
    try:
        try:
            bound = listener.listen(host, port)
        except OSError as exc:
            log.error("collector.listen_failed", listen=host_port(host, port), error=exc.strerror)
            return 1
        where = host_port(host, bound)
        # The validation processes start now, not on the first report.
        await collector.validators.start()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        retention = asyncio.create_task(_retention(collector, settings.retention_days))
        log.info(
            "collector.listening",
            url=f"http://{where}/",
            backend=store.backend,
            retention_days=settings.retention_days,
            tokens=bool(settings.ingest_tokens),
        )
        notifier.ready(f"Listening on {where}, storing in {store.backend}")
        await stop.wait()
        notifier.stopping()
        retention.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await retention
        log.info("collector.stopping")
        return 0
    finally:
        await listener.stop()
        await runner.cleanup()
        collector.validators.close()
        await asyncio.to_thread(writer.stop)
        notifier.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Console script entry point."""
    args = _parser().parse_args(argv)
    if args.command == "copy":
        from usagestatsd.collector.copy_command import copy_command

        return copy_command(args)
    cli = {
        **{d.name: getattr(args, d.name) for d in DECLARED if d.flag is not None},
        "database_url_file": args.database_url_file,
    }
    try:
        settings = load_settings(os.environ, cli, args.config)
    except SettingsError as exc:
        print(f"usagestatsd-collector: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logs.configure(settings.log_format, settings.log_level, settings.journal_stream)
    _withhold_addresses()
    try:
        store = open_store(settings)
    except SchemaTooNew as exc:
        log.error("store.schema_too_new", error=str(exc))
        return 1
    except DriverMissing as exc:
        # Restarting cannot install a package: say which one, once, and stop (78).
        log.error("store.driver_missing", backend=settings.backend, detail=str(exc))
        return EXIT_CONFIG
    except Exception as exc:
        log.error(
            "store.open_failed",
            backend=settings.backend,
            error=type(exc).__name__,
            detail=database_problem(exc, settings),
        )
        return 1
    try:
        return asyncio.run(serve(settings, store))
    finally:
        store.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
