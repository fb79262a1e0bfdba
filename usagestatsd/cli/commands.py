"""Command line: `usagestatsd run|preview|status|setup|enable|disable|demo ...`; exit codes.

Exit status: 0 success (also: collection disabled, daemon exited as asked); 1 a runtime
failure; 2 bad usage; 3 `status`: collection is disabled; 78 invalid configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from usagestatsd.base import logs
from usagestatsd.cli.grammar import build_parser as build_parser  # re-exported: tests, man page
from usagestatsd.cli.grammar import cli_overrides
from usagestatsd.config.settings import Settings, SettingsError, load_settings
from usagestatsd.consent.decision import (
    ConsentFileError,
    Decision,
    Unheeded,
    consulted_value,
    decide,
    read_consent_file,
    unheeded,
    write_consent_file,
)

if TYPE_CHECKING:
    from usagestatsd.consent.ray_files import RayConfig
    from usagestatsd.store.service_record import ServiceRecord

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_DISABLED = 3
EXIT_CONFIG = 78

log = structlog.get_logger()


def load(args: argparse.Namespace, env: dict[str, str]) -> Settings:
    """Settings from every layer; the caller handles SettingsError (exit 78)."""
    cli = {k: v if not isinstance(v, Path) else str(v) for k, v in cli_overrides(args).items()}
    return load_settings(env, cli, args.config)


def main(argv: Sequence[str] | None = None, env: dict[str, str] | None = None) -> int:
    """Run a command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "run")  # `run` is the default command
    args = build_parser().parse_args(argv)
    environ = dict(os.environ if env is None else env)
    command = args.command
    if command in ("demo", "demo-cluster", "demo-receiver"):
        return _demo(command, args)
    try:
        settings = load(args, environ)
    except SettingsError as exc:
        print(f"usagestatsd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if command == "run":  # the service record keeps the decision's inputs, the environment's too
        return cmd_run(args, settings, environ)
    handler = {
        "preview": cmd_preview,
        "status": cmd_status,
        "enable": cmd_enable,
        "disable": cmd_disable,
        "history": cmd_history,
        "forget": cmd_forget,
        "setup": cmd_setup,
    }[command]
    return handler(args, settings)


def _demo(command: str, args: argparse.Namespace) -> int:
    """The demo and its two halves: a source checkout's (`make run`), not in the packages."""
    try:
        import usagestatsd.demo as demo
    except ModuleNotFoundError as exc:
        if exc.name != "usagestatsd.demo":
            raise
        print(
            f"usagestatsd {command}: the demo is not installed with the package;"
            " run it from a source checkout: make run",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    if command == "demo":
        return asyncio.run(demo.run_demo(args.interval))
    if command == "demo-cluster":
        return asyncio.run(demo.serve_cluster(args.temp_root))
    return asyncio.run(demo.serve_receiver(args.port))


def _decision(settings: Settings, allow_prompt: bool) -> tuple[Decision, tuple[RayConfig, ...]]:
    interactive = allow_prompt and sys.stdin.isatty() and sys.stderr.isatty()

    def prompt() -> bool:
        from usagestatsd.cli.prompt import ask

        return ask(sys.stdin.fileno(), sys.stderr.fileno())

    from usagestatsd.consent.ray_files import read_ray_configs

    consent_file = read_consent_file(settings.consent_file)
    ray_configs = read_ray_configs(settings)
    return decide(settings, consent_file, interactive, prompt, ray_configs), ray_configs


# The warning for a Ray config file whose word was not taken, by why it was not.
_UNHEEDED = {
    Unheeded.UNTRUSTED: (
        "consent.ray_config_untrusted",
        {"detail": "only a file of root, the service's user or ray_user decides"},
    ),
    Unheeded.UNUSABLE: (
        "consent.ray_config_unreadable",
        {
            "detail": "a 'ray disable-usage-stats' recorded there cannot be seen",
            "fix": "run the service as that user, or opt out with 'usagestatsd disable'",
        },
    ),
}


def _log_unheeded(ray_configs: Sequence[RayConfig]) -> None:
    """One warning for each Ray config file that said nothing, naming whose it is and why."""
    for ray in ray_configs:
        why = unheeded(ray.file)
        if why is not None:
            event, words = _UNHEEDED[why]
            problem = consulted_value(ray.file)
            log.warning(event, whose=f"({ray.whose})", problem=problem, **words)


def _log_decision(decision: Decision, ray_configs: Sequence[RayConfig]) -> None:
    if decision.error:
        log.error("consent.invalid", problem=decision.error)
    _log_unheeded(ray_configs)
    if decision.enabled:
        if decision.layer == "default":
            log.warning(
                "consent.default_enabled",
                detail="usage stats are enabled by default (nothing said otherwise)",
                opt_out=decision.how_to_change,
            )
        else:
            log.info("consent.enabled", layer=decision.layer, where=decision.where)
    else:
        log.info(
            "consent.disabled",
            layer=decision.layer,
            where=decision.where,
            value=decision.value,
            how_to_change=decision.how_to_change,
        )


def cmd_run(args: argparse.Namespace, settings: Settings, environ: dict[str, str]) -> int:
    """`usagestatsd run`: decide once, then serve (or exit 0, silently, when disabled)."""
    logs.configure(settings.log_format, settings.log_level, settings.journal_stream)
    decision, ray_configs = _decision(settings, allow_prompt=True)
    if decision.save_prompt_answer:
        try:
            write_consent_file(settings.consent_file, decision.enabled)
        except (OSError, ConsentFileError) as exc:
            log.warning("consent.save_failed", path=str(settings.consent_file), problem=str(exc))
    _log_decision(decision, ray_configs)
    from usagestatsd.base.sdnotify import Notifier
    from usagestatsd.store.service_record import RecordStore, inputs_of, new_record

    inputs = inputs_of(environ, cli_overrides(args), args.config)
    record = new_record(settings, decision, inputs)
    if not decision.enabled:
        from usagestatsd.service.intake_socket import drain_passed

        drain_passed(os.environ)  # else systemd starts the service again for each of them
        line = disabled_line(decision)
        notifier = Notifier(settings.notify_socket)
        notifier.ready(line)
        notifier.stopping(line)
        notifier.close()
        stopped = replace(record, status_line=line, stopped_ms=record.started_ms, intake=None)
        try:  # only into an existing state directory: disabled, the daemon creates nothing
            RecordStore(settings.state_dir).save(stopped, create=False)
        except OSError as exc:
            log.warning("service_record.write_failed", problem=exc.strerror or str(exc))
        from usagestatsd.store.published import Publisher

        Publisher(settings).record_changed(stopped)  # for every user's status
        return EXIT_OK
    from usagestatsd.service.process import run_daemon

    withheld = _withheld(decision)
    if args.daemonize:
        return _daemonized(settings, args.pidfile, withheld, record)
    return run_daemon(settings, withheld=withheld, record=record)


def disabled_line(decision: Decision) -> str:
    """The STATUS= line of a disabled service: what disabled it, by name and value."""
    reason = decision.reason[:1].upper() + decision.reason[1:]
    return f"{reason}; not collecting"


def _withheld(decision: Decision) -> tuple[str, ...]:
    """Fields sent as null because consent covers an older field set (logged once)."""
    from usagestatsd.contract.fieldsets import CURRENT_VERSION, withheld

    fields = withheld(decision.accepted_fields_version)
    if fields:
        log.warning(
            "consent.fields_pending",
            accepted_version=decision.accepted_fields_version,
            current_version=CURRENT_VERSION,
            fields=",".join(fields),
            detail="these fields are sent as null until the new field set is accepted",
            how_to_accept="run 'usagestatsd enable' (or set accept_fields_version in the "
            "settings file) and restart the service",
        )
    return fields


def _daemonized(
    settings: Settings, pidfile: Path | None, withheld: tuple[str, ...], record: ServiceRecord
) -> int:
    import daemon  # python-daemon, only for init systems without Type=notify
    import daemon.pidfile

    from usagestatsd.service.process import run_daemon

    context = daemon.DaemonContext(
        pidfile=daemon.pidfile.TimeoutPIDLockFile(str(pidfile)) if pidfile else None,
        stdout=sys.stdout,
        stderr=sys.stderr,
        working_directory="/",
        umask=0o022,
    )
    with context:
        # Detached, the daemon has another pid: record the one that serves.
        from usagestatsd.store.service_record import restamped

        return run_daemon(settings, withheld=withheld, record=restamped(record))


def cmd_preview(args: argparse.Namespace, settings: Settings) -> int:
    """`usagestatsd preview`: the exact bytes the next report would carry; sends nothing."""
    logs.configure("console" if sys.stderr.isatty() else "json", "warning", settings.journal_stream)
    from usagestatsd.cli.preview import preview
    from usagestatsd.contract.fieldsets import withheld

    decision, _ = _decision(settings, allow_prompt=False)
    return asyncio.run(preview(settings, withheld(decision.accepted_fields_version)))


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    """`usagestatsd status`: enabled or not and why, the session, last and next report."""
    from usagestatsd.cli.status import describe, render

    decision, _ = _decision(settings, allow_prompt=False)
    info = describe(settings, decision)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(render(info))
    # The exit status follows what is in effect: the running service's own decision.
    return EXIT_OK if info["enabled"] else EXIT_DISABLED


def _set_consent(settings: Settings, enabled: bool) -> int:
    path = settings.consent_file
    try:
        write_consent_file(path, enabled)
    except ConsentFileError as exc:
        print(f"usagestatsd: refusing to change {path}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        print(f"usagestatsd: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    word = "enabled" if enabled else "disabled"
    print(f"Usage stats collection {word} in {path}.")
    print(
        "A running daemon keeps its decision until restarted: "
        "run 'systemctl restart usagestatsd' to apply it."
    )
    return EXIT_OK


def cmd_enable(args: argparse.Namespace, settings: Settings) -> int:
    """`usagestatsd enable`: write usage_stats=true into the consent file."""
    return _set_consent(settings, True)


def cmd_disable(args: argparse.Namespace, settings: Settings) -> int:
    """`usagestatsd disable`: write usage_stats=false into the consent file."""
    return _set_consent(settings, False)


def cmd_history(args: argparse.Namespace, settings: Settings) -> int:
    """`usagestatsd history`: every attempt, with the exact bytes sent."""
    from usagestatsd.cli.forget import show_history

    return show_history(settings, args.json, args.last, args.session, args.raw)


def cmd_forget(args: argparse.Namespace, settings: Settings) -> int:
    """`usagestatsd forget`: the reported sessions, and deletion requests where possible."""
    from usagestatsd.cli.forget import forget, list_sessions

    if args.session is None and not args.all:
        return list_sessions(settings)
    logs.configure("console" if sys.stderr.isatty() else "json", "info", settings.journal_stream)
    return asyncio.run(forget(settings, args.session, args.all))


def cmd_setup(args: argparse.Namespace, settings: Settings) -> int:
    """`usagestatsd setup [--apply]`: usagestatsd/setup/command.py."""
    from usagestatsd.setup.command import run_setup

    return run_setup(settings, args.apply)


def entry_point() -> None:
    """Console-script entry."""
    status = main(sys.argv[1:])
    # The exit status is the daemon's, not the interpreter's: a failing final flush (the
    # reader of stdout or stderr went away) would otherwise turn it into 120.
    logs.flush_standard_streams()
    sys.exit(status)
