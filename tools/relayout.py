"""Move usagestatsd's flat modules into subpackages by family, and every reference with them.

    python3 tools/relayout.py [--skip PATH]... [--no-check]

Run from the repository root. Idempotent: a second run changes nothing, and a run on a tree
where some references still use the old names (a branch merged after the move) rewrites only
those. MAP below is the one table of what goes where; a top-level module it does not name
stops the run before anything is touched.

What it does, in order:
1. `git mv` each old module to its new place (creating the subpackages' `__init__.py`);
2. rewrites every reference in the tracked text files: Python imports (`from usagestatsd
   import x`, relative imports, dotted names in code and strings: imports, monkeypatch
   targets, `-m usagestatsd.x`, entry points), and paths (`usagestatsd/x.py`, and a bare
   `x.py` in prose and comments);
3. keeps the .deb's file list naming every subpackage;
4. sorts and formats the rewritten Python files with the venv's ruff, when there is one;
5. proves nothing dangles: `compileall`, then an import of every module of the package.
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import subprocess
import sys
import tokenize
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "usagestatsd"

# Old module (under usagestatsd) -> new dotted path (under usagestatsd). The one table.
MAP: dict[str, str] = {
    # base: below everything; the file system, child processes, logging, sd_notify.
    "fileio": "base.files",
    "childproc": "base.childproc",
    "logs": "base.logs",
    "systemd": "base.sdnotify",
    "hostport": "base.hostport",
    "throttle": "base.throttle",
    # contract: the report declared once, the guard, Ray's tag names (both ends import it).
    "fields": "contract.fields",
    "fieldsets": "contract.fieldsets",
    "report": "contract.report",
    "ray_tags": "contract.ray_tags",
    "ray_support": "contract.ray_support",
    "identifiers": "contract.identifiers",
    "privacy": "contract.guard",
    # config: the settings, their declaration, parsers and layering.
    "settings": "config.settings",
    "settings_declare": "config.declare",
    "settings_types": "config.types",
    "settings_values": "config.values",
    "setting_flags": "config.flags",
    # facts: everything behind the trust boundary, read from sockets, files and /proc.
    "session": "facts.session",
    "peers": "facts.peers",
    "sockdiag": "facts.sockdiag",
    "connectors": "facts.connectors",
    "fetch": "facts.fetch",
    "dashboard": "facts.dashboard",
    "sources": "facts.sources",
    "cluster": "facts.cluster",
    "clusterconfig": "facts.clusterconfig",
    "discovery": "facts.ray_head",
    "watch": "facts.watch",
    "procfs": "facts.procfs",
    # consent: whether to report, and the files that say so.
    "consent_file": "consent.file",
    "ray_consent": "consent.ray_files",
    "consent": "consent.decision",
    # store: what is kept on disk, one writer per file.
    "state": "store.state",
    "history": "store.history",
    "keeper": "store.keeper",
    "running": "store.service_record",
    "published": "store.published",
    # cycle: one report, start to end.
    "cycle": "cycle.run",
    "pipeline": "cycle.pipeline",
    "sender": "cycle.sender",
    "refusal": "cycle.refusal",
    "beside_ray": "cycle.beside_ray",
    # service: the process: startup, main loop, shutdown, the intake.
    "daemon": "service.process",
    "reporter": "service.reporter",
    "announce": "service.announce",
    "follow": "service.follow",
    "schedule": "service.schedule",
    "intake": "service.intake",
    "intake_socket": "service.intake_socket",
    # setup: `usagestatsd setup`, what it finds and what it writes.
    "setup": "setup.command",
    "setup_plan": "setup.remedies",
    "setup_trust": "setup.trust",
    "unitstate": "setup.unitstate",
    # cli: the only place that knows argparse and exit codes.
    "cli": "cli.commands",
    "cli_args": "cli.grammar",
    "prompt": "cli.prompt",
    "preview": "cli.preview",
    "status": "cli.status",
    "forget": "cli.forget",
}

# Stay at the top: the package, `python -m usagestatsd`, and the provider, which Ray's own
# Python runs as a standalone file (installed apart, /usr/lib/usagestatsd/provider.py).
TOP_LEVEL = {"__init__", "__main__", "provider"}

# Each new subpackage's docstring (its __init__.py), lowest layer first.
PACKAGES: dict[str, str] = {
    "base": "The file system, child processes, logging and sd_notify: below everything.",
    "contract": "The report declared once, its guard, and Ray's tag names: both ends use it.",
    "config": "The settings: how each is declared, parsed and layered.",
    "facts": "Everything behind the trust boundary: sessions, peers, sources, Ray's head.",
    "consent": "Whether usage stats are reported, and the files that say so.",
    "store": "What is kept on disk: state, history, the service record, status.json.",
    "cycle": "One report, start to end: gather, decide, build, guard, send, keep.",
    "service": "The process: startup, the main loop, the intake, shutdown.",
    "setup": "`usagestatsd setup`: what a head node is missing and what fixes it.",
    "cli": "The command line: the only place that knows argparse and exit codes.",
}

# A bare `x.py` is rewritten in prose (comments, docstrings, documents) only, and never for
# these names, which are also other programs' files (Ray's dashboard.py, the journey's
# watch.py) and keep their base name here anyway.
BARE_NEVER = {"dashboard", "watch"}
# The collector has modules of these names: in its files and documents, a bare name is its own.
COLLECTOR_NAMES = {"cli", "settings"}
LINE_LIMIT = 100  # pyproject.toml's [tool.ruff] line-length
PROSE_SUFFIXES = {".md", ".txt", ".8", ".5"}

# History says what was true when it was written.
NEVER_REWRITTEN = {"CHANGELOG.md"}

DOTTED = re.compile(r"(?<![\w.-])" + PACKAGE + r"((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
PATH = re.compile(r"(?<![\w.-])" + PACKAGE + r"/([a-z_][a-z0-9_]*)\.py\b")


class RelayoutError(Exception):
    """A reason to stop before (or instead of) leaving a half-moved tree."""


@dataclass
class Summary:
    moved: list[tuple[str, str]] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    rewritten: dict[str, int] = field(default_factory=dict)


def old_path(old: str) -> Path:
    return Path(PACKAGE) / f"{old}.py"


def new_path(new: str) -> Path:
    return Path(PACKAGE, *new.split(".")).with_suffix(".py")


def children(package: str) -> set[str]:
    """The new submodules of a subpackage (its names that are modules, after the move)."""
    return {new.split(".", 1)[1] for new in MAP.values() if new.split(".")[0] == package}


def check_map(root: Path) -> None:
    """Fail loudly on any top-level module the table does not place, and on ambiguity."""
    here = {p.stem for p in (root / PACKAGE).glob("*.py")}
    unmapped = sorted(here - TOP_LEVEL - set(MAP))
    if unmapped:
        raise RelayoutError(
            "no mapping for top-level module(s): "
            + ", ".join(f"{PACKAGE}/{m}.py" for m in unmapped)
            + "; add each to MAP in tools/relayout.py"
        )
    targets = list(MAP.values())
    if len(set(targets)) != len(targets):
        raise RelayoutError("MAP sends two modules to one place")
    if set(PACKAGES) != {new.split(".")[0] for new in targets}:
        raise RelayoutError("PACKAGES and MAP name different subpackages")
    for old, new in MAP.items():
        if old in PACKAGES:
            _check_no_shadowing(root, old, new)


def _check_no_shadowing(root: Path, old: str, new: str) -> None:
    """`usagestatsd.<old>.<name>` is read as the new submodule when <name> is one; it must
    then not also be a name the old module defines."""
    source = root / old_path(old)
    if not source.exists():
        source = root / new_path(new)
    if not source.exists():
        return
    clash = sorted(_top_level_names(source) & children(old))
    if clash:
        raise RelayoutError(
            f"{PACKAGE}.{old} defines {', '.join(clash)}, which would read as submodules of "
            f"the new {PACKAGE}/{old}/; rename them in MAP"
        )


def _top_level_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True)
    return done.stdout


def move_modules(root: Path, summary: Summary) -> None:
    for package, doc in PACKAGES.items():
        init = root / PACKAGE / package / "__init__.py"
        if not init.exists():
            init.parent.mkdir(exist_ok=True)
            init.write_text(f'"""{doc}"""\n')
            git(root, "add", str(init.relative_to(root)))
            summary.created.append(str(init.relative_to(root)))
    for old, new in MAP.items():
        source, target = old_path(old), new_path(new)
        if not (root / source).exists():
            continue
        if (root / target).exists():
            raise RelayoutError(f"both {source} and {target} exist: merge them by hand first")
        git(root, "mv", str(source), str(target))
        summary.moved.append((str(source), str(target)))


# ---- references -------------------------------------------------------------------------


def new_dotted(rest: list[str], imported: Iterable[str] = ()) -> list[str] | None:
    """The new form of `usagestatsd.<rest>`, or None when it needs no change.

    A name that is both an old module and a new subpackage (`cli`, `cycle`, ...) is read as
    the new subpackage when what follows (or every name imported from it) is one of its
    submodules: that is how a reference already rewritten stays as it is.
    """
    head = rest[0]
    if head not in MAP:
        return None
    if head in PACKAGES:
        following = rest[1:2] or list(imported)
        if following and all(name in children(head) for name in following):
            return None
    return MAP[head].split(".") + rest[1:]


def rewrite_dotted(text: str, imported_after: bool = False) -> str:
    def one(match: re.Match[str]) -> str:
        rest = match.group(1)[1:].split(".")
        imported: list[str] = []
        if imported_after:
            tail = text[match.end() : match.end() + 400]
            found = re.match(r"\s+import\s+\(?\s*([\w\s,]+)", tail)
            if found:
                imported = [n.split()[0] for n in found.group(1).split(",") if n.strip()]
        new = new_dotted(rest, imported)
        return match.group(0) if new is None else ".".join([PACKAGE, *new])

    return DOTTED.sub(one, text)


def rewrite_paths(text: str) -> str:
    def one(match: re.Match[str]) -> str:
        old = match.group(1)
        return match.group(0) if old not in MAP else str(new_path(MAP[old]))

    return PATH.sub(one, text)


def rewrite_bare(text: str, rel: Path) -> str:
    """A bare module file name in prose ("see consent.py"): the new path in the package."""
    names = [m for m in MAP if m not in BARE_NEVER]
    if rel.parts[:2] == (PACKAGE, "collector") or "collector" in rel.stem:
        names = [m for m in names if m not in COLLECTOR_NAMES]
    bare = re.compile(
        r"(?<![\w/.-])(" + "|".join(sorted(names, key=len, reverse=True)) + r")\.py\b"
    )
    return bare.sub(lambda m: MAP[m.group(1)].replace(".", "/") + ".py", text)


def rewrite_prose_in_python(text: str, rel: Path) -> str:
    """rewrite_bare on comments and docstrings only: code names other programs' files too."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):
        return text
    offsets = _line_offsets(text)
    spans = [
        (offsets[t.start[0] - 1] + t.start[1], offsets[t.end[0] - 1] + t.end[1])
        for t in tokens
        if t.type == tokenize.COMMENT
        or (t.type == tokenize.STRING and re.match(r"[rRuU]?(\"\"\"|\'\'\')", t.string))
    ]
    for start, end in reversed(spans):
        text = text[:start] + rewrite_bare(text[start:end], rel) + text[end:]
    return text


def wrap_long_prose(before: str, text: str) -> str:
    """Lines of comments and docstrings the rewrite made longer than the line limit: broken
    at the last space that fits, the rest on a new line with the same indent (and `# `)."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):
        return text
    prose: set[int] = set()
    for t in tokens:
        if t.type == tokenize.COMMENT and not t.line[: t.start[1]].strip():
            prose.add(t.start[0] - 1)
        elif t.type == tokenize.STRING and re.match(r"[rRuU]?(\"\"\"|\'\'\')", t.string):
            prose.update(range(t.start[0] - 1, t.end[0]))
    untouched = set(before.splitlines())
    lines = text.splitlines(keepends=True)
    for index in sorted(prose, reverse=True):
        line = lines[index]
        if len(line.rstrip("\n")) > LINE_LIMIT and line.rstrip("\n") not in untouched:
            lines[index : index + 1] = _wrap(line)
    return "".join(lines)


def _wrap(line: str) -> list[str]:
    body = line.rstrip("\n")
    indent = body[: len(body) - len(body.lstrip())]
    prefix = indent + "# " if body.lstrip().startswith("#") else indent
    cut = body.rfind(" ", len(prefix) + 1, LINE_LIMIT + 1)
    if cut <= len(prefix):
        return [line]
    rest = prefix + body[cut + 1 :]
    return [body[:cut] + "\n", *_wrap(rest + line[len(body) :])]


def rewrite_embedded_from_package(text: str) -> str:
    """`from usagestatsd import x` in Python embedded in another file (a shell here-doc)."""

    def one(match: re.Match[str]) -> str:
        names = []
        for part in match.group(2).split(","):
            words = part.split()
            names.append((words[0], words[2] if len(words) == 3 else None))
        lines = _from_package(names)
        return match.group(0) if lines is None else ("\n" + match.group(1)).join(lines)

    pattern = r"^([ \t]*)from " + PACKAGE + r" import ([\w ,]+)$"
    return re.sub(pattern, one, text, flags=re.MULTILINE)


def rewrite_python(path: Path, text: str) -> str:
    """Imports the regexes cannot see: `from usagestatsd import x` and relative imports."""
    try:
        tree = ast.parse(text)
    except SyntaxError as exc:
        raise RelayoutError(f"{path}: cannot parse: {exc}") from exc
    edits: list[tuple[int, int, str]] = []
    offsets = _line_offsets(text)
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        replacement = _import_from(path, node)
        if replacement is None:
            continue
        start = offsets[node.lineno - 1] + node.col_offset
        end = offsets[(node.end_lineno or node.lineno) - 1] + (node.end_col_offset or 0)
        indent = " " * node.col_offset
        edits.append((start, end, ("\n" + indent).join(replacement)))
    for start, end, new in sorted(edits, reverse=True):
        text = text[:start] + new + text[end:]
    return text


def _line_offsets(text: str) -> list[int]:
    offsets = [0]
    for line in text.splitlines(keepends=True):
        offsets.append(offsets[-1] + len(line))
    return offsets


def _absolute(path: Path, node: ast.ImportFrom) -> str | None:
    if node.level == 0:
        return node.module
    parts = list(path.with_suffix("").parts)
    if parts[0] != PACKAGE:
        return None
    base = parts[: len(parts) - node.level]
    return ".".join(base + ([node.module] if node.module else []))


def _import_from(path: Path, node: ast.ImportFrom) -> list[str] | None:
    module = _absolute(path, node)
    if module is None or not (module == PACKAGE or module.startswith(PACKAGE + ".")):
        return None
    names = [(a.name, a.asname) for a in node.names]
    if module == PACKAGE:
        return _from_package(names)
    if node.level == 0:
        return None  # the dotted regex rewrites it, with the text around it intact
    rest = module.split(".")[1:]
    new = new_dotted(rest, [n for n, _ in names]) or rest
    return [f"from {'.'.join([PACKAGE, *new])} import {_names(names)}"]


def _from_package(names: list[tuple[str, str | None]]) -> list[str] | None:
    """`from usagestatsd import a, b`: each old module from its new subpackage."""
    if not any(name in MAP for name, _ in names):
        return None
    kept = [(n, a) for n, a in names if n not in MAP]
    lines = [f"from {PACKAGE} import {_names(kept)}"] if kept else []
    for name, alias in names:
        if name in MAP:
            package, _, module = MAP[name].rpartition(".")
            local = alias or name
            suffix = "" if local == module else f" as {local}"
            lines.append(f"from {PACKAGE}.{package} import {module}{suffix}")
    return lines


def _names(names: list[tuple[str, str | None]]) -> str:
    return ", ".join(n if a is None else f"{n} as {a}" for n, a in names)


def rewrite_file(root: Path, rel: Path) -> bool:
    path = root / rel
    try:
        before = path.read_text()
    except (UnicodeDecodeError, IsADirectoryError, FileNotFoundError):
        return False
    text = before
    if rel.suffix == ".py":
        text = rewrite_python(rel, text)
        text = rewrite_dotted(text, imported_after=True)
        text = rewrite_paths(text)
        text = rewrite_prose_in_python(text, rel)
        text = wrap_long_prose(before, text)
    else:
        text = rewrite_embedded_from_package(text)
        text = rewrite_dotted(text)
        text = rewrite_paths(text)
        if rel.suffix in PROSE_SUFFIXES:
            text = rewrite_bare(text, rel)
    if text == before:
        return False
    path.write_text(text)
    return True


def rewrite_references(root: Path, skip: set[str], summary: Summary) -> list[Path]:
    changed: list[Path] = []
    for name in git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split(
        "\0"
    ):
        if not name or name in NEVER_REWRITTEN or name in skip or name == "tools/relayout.py":
            continue
        rel = Path(name)
        if rewrite_file(root, rel):
            changed.append(rel)
            summary.rewritten[name] = 1
    return changed


def keep_deb_file_list(root: Path, summary: Summary) -> None:
    """The daemon's .install names `usagestatsd/*.py`: add each subpackage beside it."""
    install = root / "packaging/debian/usagestatsd.install"
    if not install.exists():
        return
    lines = install.read_text().splitlines()
    flat = f"usr/lib/python3*/dist-packages/{PACKAGE}/*.py"
    if flat not in lines:
        return
    wanted = [f"usr/lib/python3*/dist-packages/{PACKAGE}/{p}" for p in PACKAGES]
    missing = [w for w in wanted if w not in lines]
    if not missing:
        return
    at = lines.index(flat) + 1
    install.write_text("\n".join(lines[:at] + missing + lines[at:]) + "\n")
    summary.rewritten[str(install.relative_to(root))] = 1


# ---- proof --------------------------------------------------------------------------------


def python_for(root: Path) -> str:
    venv = root / ".venv/bin/python"
    return str(venv) if venv.exists() else sys.executable


def tidy(root: Path, changed: list[Path]) -> None:
    """Sort the imports the rewrite reordered and reflow long lines, when ruff is at hand."""
    ruff = root / ".venv/bin/ruff"
    files = [str(p) for p in changed if p.suffix == ".py" and (root / p).exists()]
    if not ruff.exists() or not files:
        return
    subprocess.run([str(ruff), "check", "-q", "--select", "I", "--fix", *files], cwd=root)
    subprocess.run([str(ruff), "format", "-q", *files], cwd=root, check=True)


def prove(root: Path) -> list[str]:
    python = python_for(root)
    dirs = [d for d in (PACKAGE, "tests", "bench", "tools") if (root / d).is_dir()]
    compiled = subprocess.run([python, "-m", "compileall", "-q", *dirs], cwd=root)
    problems = [] if compiled.returncode == 0 else ["compileall failed (above)"]
    # `__main__` modules run their program when imported: compileall has checked them.
    modules = sorted(
        _module_name(p.relative_to(root))
        for p in (root / PACKAGE).rglob("*.py")
        if p.name != "__main__.py"
    )
    script = (
        "import importlib, sys, traceback\n"
        "bad = 0\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception:\n"
        "        bad += 1\n"
        "        print(f'relayout: cannot import {name}:', file=sys.stderr)\n"
        "        traceback.print_exc()\n"
        "sys.exit(1 if bad else 0)\n"
    )
    imported = subprocess.run([python, "-c", script, *modules], cwd=root)
    if imported.returncode != 0:
        problems.append("some modules do not import (above)")
    print(f"relayout: compiled {', '.join(dirs)}; imported {len(modules)} modules")
    return problems


def _module_name(rel: Path) -> str:
    parts = rel.with_suffix("").parts
    return ".".join(parts[:-1] if rel.name == "__init__.py" else parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip", action="append", default=[], help="a path left untouched")
    parser.add_argument("--no-check", action="store_true", help="skip compileall and imports")
    args = parser.parse_args(argv)
    root = Path.cwd()
    if not (root / PACKAGE / "__init__.py").exists() or not (root / ".git").exists():
        print("relayout: run me from the repository root", file=sys.stderr)
        return 2
    summary = Summary()
    try:
        check_map(root)
        move_modules(root, summary)
        changed = rewrite_references(root, set(args.skip), summary)
        keep_deb_file_list(root, summary)
    except RelayoutError as exc:
        print(f"relayout: FAIL: {exc}", file=sys.stderr)
        return 1
    tidy(root, changed)
    for source, target in summary.moved:
        print(f"relayout: moved {source} -> {target}")
    for created in summary.created:
        print(f"relayout: created {created}")
    print(
        f"relayout: {len(summary.moved)} modules moved, {len(summary.created)} packages made, "
        f"{len(summary.rewritten)} files rewritten"
    )
    problems = [] if args.no_check else prove(root)
    for problem in problems:
        print(f"relayout: FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
