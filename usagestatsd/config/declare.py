"""How a setting is declared, and the layering every declared setting goes through.

A setting is one field of a settings dataclass, declared with `setting(...)`: its default
(the field's), its settings-file key, its environment variables, its command-line flag,
its parser and its doc line. The loader (`gather`), the command line's flags (cli/commands.py),
the error messages and the test of docs/configuration.md are all derived from it.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from usagestatsd.base.files import UnsafeFileError, read_regular_file

MAX_SETTINGS_FILE_BYTES = 1 << 20
T = TypeVar("T")
Parser = Callable[[object], Any]


# Where the credentials of a URL end: the text's next space or quote (not its next `/`: a
# password may hold one, and a masked path costs nothing).
_URL_TEXT_END = re.compile(r"[\s'\"]")


def mask_credentials(text: str) -> str:
    """`text` with the credentials of every URL or DSN in it masked: `https://user:***@host/`
    (a user name alone stays, a token alone becomes `***`). Linear in the text."""
    out = []
    pos = 0
    while (scheme_end := text.find("://", pos)) != -1:
        begin = scheme_end + 3
        end_match = _URL_TEXT_END.search(text, begin)
        end = end_match.start() if end_match else len(text)
        at = text.rfind("@", begin, end)
        if at == -1:
            out.append(text[pos:end])
            pos = end
            continue
        user, colon, _ = text[begin:at].partition(":")
        out.append(text[pos:begin] + (f"{user}:***" if colon else "***"))
        pos = at
    out.append(text[pos:])
    return "".join(out)


class SettingsError(Exception):
    """A setting has a value that is not accepted; the message says all an operator needs.

    An endpoint URL or database DSN in the value is shown with its credentials masked.
    """

    def __init__(self, name: str, source: str, value: object, accepted: str) -> None:
        self.name = name
        self.source = source
        self.value = value
        self.accepted = accepted
        # Masked before it is shortened: a cut could leave a password without its `@`.
        shown = mask_credentials(value if isinstance(value, str) else repr(value))
        if len(shown) > 200:
            shown = shown[:200] + "..."
        super().__init__(
            f"invalid setting {name} from {source}: {shown!r} is not accepted; expected {accepted}"
        )


@dataclass(frozen=True)
class Env:
    """One environment variable a setting is read from (a later one wins)."""

    name: str
    parse: Parser | None = None  # instead of the setting's text parser (RAY_TMPDIR)
    pick: Callable[[str], str] | None = None  # the part of the value that is ours
    keep_empty: bool = False  # an empty value is a value, not "unset"


@dataclass(frozen=True)
class Flag:
    """The command-line flag that sets a setting; its name is --the-setting-name unless given."""

    name: str | None = None
    metavar: str | None = None
    help: str | None = None
    show_default: bool = False  # help ends with "(default X)", X the declared default
    run_only: bool = False  # only `usagestatsd run` has it (else: every command that loads)
    switch: bool = False  # takes no value: present means true
    repeat: bool = False  # may be given several times; the values are joined with spaces


@dataclass(frozen=True)
class _Declared:
    env: tuple[Env, ...]
    parse: Parser
    text_parse: Parser | None
    file: bool
    file_key: str | None
    flag: Flag | None
    doc: str | None
    doc_default: str | None
    default_from: Callable[[Mapping[str, str], int], Any] | None  # returning None: `default`
    finish: Callable[[Any, Mapping[str, str]], Any] | None


def setting(
    default: T,
    parse: Parser,
    *,
    env: tuple[str | Env, ...] = (),
    text_parse: Parser | None = None,
    file: bool = True,
    file_key: str | None = None,
    flag: Flag | None = None,
    doc: str | None = None,
    doc_default: str | None = None,
    default_from: Callable[[Mapping[str, str], int], Any] | None = None,
    finish: Callable[[Any, Mapping[str, str]], Any] | None = None,
    factory: Callable[[], T] | None = None,
) -> T:
    """A dataclass field that is a setting (see the module docstring).

    `text_parse` reads the environment and the command line when they spell the value
    differently from the file; `doc` is what docs/configuration.md says is accepted (a
    Choice lists its words without one); `doc_default` how it shows the default, when that
    is not the value itself; `default_from` computes the default from the environment and
    the euid (None: the declared one); `finish` adjusts the final value, whoever set it.
    """
    declared = _Declared(
        env=tuple(e if isinstance(e, Env) else Env(e) for e in env),
        parse=parse,
        text_parse=text_parse,
        file=file,
        file_key=file_key,
        flag=flag,
        doc=doc,
        doc_default=doc_default,
        default_from=default_from,
        finish=finish,
    )
    metadata = {"setting": declared}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def group(cls: Callable[[], T]) -> T:
    """A field holding a dataclass of settings, each named `<field>.<setting>`."""
    return field(default_factory=cls, metadata={"group": cls})


def groups(cls: type) -> dict[str, type]:
    """The fields of `cls` that hold a dataclass of settings, and its class."""
    return {f.name: f.metadata["group"] for f in dataclasses.fields(cls) if "group" in f.metadata}


@dataclass(frozen=True)
class Declaration:
    """One declared setting, as the loader, the CLI and the doc test see it."""

    name: str  # as errors, sources and docs name it: "report_interval_s", "retry.budget_s"
    default: Any
    env: tuple[Env, ...]
    parse: Parser
    text_parse: Parser
    file_key: str | None
    flag: Flag | None
    doc: str
    doc_default: str
    default_from: Callable[[Mapping[str, str], int], Any] | None  # returning None: `default`
    finish: Callable[[Any, Mapping[str, str]], Any] | None

    @property
    def flag_name(self) -> str | None:
        """The flag as an operator types it, if the setting has one."""
        if self.flag is None:
            return None
        return self.flag.name or "--" + self.name.replace("_", "-")

    @property
    def choices(self) -> tuple[str, ...] | None:
        """The accepted words, when the parser is a fixed list of them."""
        choices: tuple[str, ...] | None = getattr(self.parse, "choices", None)
        return choices


def declarations(cls: type, prefix: str = "") -> Iterator[Declaration]:
    """Every setting declared in a settings dataclass, in declaration order."""
    for f in dataclasses.fields(cls):
        if "group" in f.metadata:
            yield from declarations(f.metadata["group"], f"{prefix}{f.name}.")
            continue
        declared = f.metadata.get("setting")
        if not isinstance(declared, _Declared):
            continue
        name = prefix + f.name
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        choices = getattr(declared.parse, "choices", None)
        yield Declaration(
            name=name,
            default=default,
            env=declared.env,
            parse=declared.parse,
            text_parse=declared.text_parse or declared.parse,
            file_key=(declared.file_key or name) if declared.file else None,
            flag=declared.flag,
            doc=declared.doc or ", ".join(f"`{c}`" for c in choices or ()),
            doc_default=declared.doc_default or shown_default(default),
            default_from=declared.default_from,
            finish=declared.finish,
        )


def shown_default(value: object) -> str:
    """A default as docs/configuration.md shows it."""
    if value is None or (isinstance(value, (tuple, dict)) and not value):
        return "none"
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int):
        return f"`{value[0]}:{value[1]}`"  # an address
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int) and value >= 1 << 20 and value % (1 << 20) == 0:
        return f"{value >> 20} MiB"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    return f"`{value}`"


def read_toml_file(path: Path, explicit: bool) -> dict[str, Any] | None:
    """A settings file's TOML table; None when a default (not `explicit`) file is absent.

    Shared by the daemon's and the collector's settings: at most 1 MiB, a regular file
    only, UTF-8 TOML; every problem is one SettingsError naming the file.
    """
    source = f"settings file {path}"
    if str(path) == os.devnull:
        return {}  # `--config /dev/null`: deliberately no settings file
    try:
        # A FIFO (or a device) at the path is refused, never blocks start-up; a symlink
        # (config management often links /etc files) is followed.
        data = read_regular_file(path, MAX_SETTINGS_FILE_BYTES, follow_symlinks=True)
    except FileNotFoundError:
        if explicit:
            raise SettingsError(
                "config", "the command line", str(path), "an existing file"
            ) from None
        return None
    except UnsafeFileError as exc:
        if exc.errno == errno.EFBIG:
            raise SettingsError(
                "config", source, f"{path} is larger than 1 MiB", "a file under 1 MiB"
            ) from None
        if path.is_dir():  # worded as open() words it, as before fileio read the file
            problem = os.strerror(errno.EISDIR)
            raise SettingsError("config", source, problem, "a readable file") from None
        raise SettingsError("config", source, f"{path} is not a regular file", "a file") from None
    except OSError as exc:
        raise SettingsError("config", source, exc.strerror or str(exc), "a readable file") from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError("config", source, str(exc), "valid UTF-8 TOML") from None


def flatten(table: Mapping[str, Any], keep: frozenset[str], prefix: str = "") -> dict[str, Any]:
    """A TOML table as dotted keys (`[retry] budget_s` is `retry.budget_s`), tables in
    `keep` (values that are tables themselves) left whole."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name not in keep:
            flat.update(flatten(value, keep, name + "."))
        else:
            flat[name] = value
    return flat


@dataclass
class Gathered:
    """The values set by some layer, and where each came from."""

    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    command_line: set[str] = field(default_factory=set)  # the names set by a flag

    def take(self, name: str, raw: object, source: str, parse: Parser) -> None:
        try:
            self.values[name] = parse(raw)
        except ValueError as exc:
            raise SettingsError(name, source, raw, str(exc)) from None
        self.sources[name] = source


def gather(
    declared: tuple[Declaration, ...],
    file_values: Mapping[str, Any],
    file_source: str,
    env: Mapping[str, str],
    cli: Mapping[str, object],
) -> Gathered:
    """Layer each setting: settings file < environment (in order) < command line."""
    got = Gathered()
    for d in declared:
        if d.file_key and d.file_key in file_values:
            got.take(d.name, file_values[d.file_key], file_source, d.parse)
        for var in d.env:
            if var.name in env and (env[var.name] != "" or var.keep_empty):
                raw = var.pick(env[var.name]) if var.pick else env[var.name]
                got.take(d.name, raw, f"environment variable {var.name}", var.parse or d.text_parse)
        if cli.get(d.name) is not None:
            flag = d.flag_name or d.name  # every setting cli/commands.py passes declares its flag
            got.take(d.name, cli[d.name], f"command line {flag}", d.text_parse)
            got.command_line.add(d.name)
    return got
