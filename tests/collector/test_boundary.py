"""The head-node daemon never imports the collector; the collector reuses only pure modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parents[2] / "usagestatsd"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_daemon_modules_do_not_import_the_collector() -> None:
    """No module outside usagestatsd/collector/ names usagestatsd.collector (even lazily)."""
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "collector" not in path.relative_to(PACKAGE).parts
        and any(
            n == "usagestatsd.collector" or n.startswith("usagestatsd.collector.")
            for n in _imports(path)
        )
    ]
    assert offenders == []


def test_running_the_daemon_cli_loads_no_collector_module() -> None:
    """Importing the daemon's entry points leaves sys.modules free of the collector."""
    code = (
        "import sys, usagestatsd.cli.commands, usagestatsd.service.process, usagestatsd.cli.forget;"
        "print([m for m in sys.modules if m.startswith('usagestatsd.collector')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_collector_imports_only_pure_daemon_modules() -> None:
    """The collector reuses the fields, schema, privacy guard, logs, settings, sd_notify."""
    allowed = {
        "usagestatsd.__version__",
        "usagestatsd.contract.fields",
        "usagestatsd.contract.report",
        "usagestatsd.contract.guard",
        "usagestatsd.base.logs",
        "usagestatsd.config.settings",
        "usagestatsd.config.declare",  # how a setting is declared and layered
        "usagestatsd.config.values",  # the value parsers
        "usagestatsd.base.sdnotify",
        "usagestatsd.config.flags",  # add_flag: a setting's flag, as it declares it
        "usagestatsd.base.hostport",  # host:port, IPv6 in brackets
        "usagestatsd.base.throttle",  # the log throttle, and the accept_failed line
    }
    used: set[str] = set()
    for path in (PACKAGE / "collector").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "usagestatsd":
                used.update(f"usagestatsd.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                used.add(node.module)
                # `from usagestatsd.base import logs`: the module imported is base.logs
                where = PACKAGE.parent.joinpath(*node.module.split("."))
                if where.is_dir():
                    used.discard(node.module)
                    used.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                used.update(alias.name for alias in node.names)
    daemon = {n for n in used if n.startswith("usagestatsd.") and ".collector" not in n}
    assert daemon <= allowed, daemon - allowed
