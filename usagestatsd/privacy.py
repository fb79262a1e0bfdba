"""The privacy guard: nothing that identifies a person, host or address leaves the machine.

Pure. Every string a report carries came from the cluster (untrusted) or from settings.
Each field has an allow-list shape; on top of that, detectors look for addresses, paths,
host names and this machine's own identifiers. An offending scalar becomes null, an
offending list item or tag is dropped, and each touch is returned as a `Redaction` that
names the field and the kind of problem, never the value itself.
"""

from __future__ import annotations

import ipaddress
import math
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from usagestatsd.fields import BY_NAME, FIELDS, Field, Json
from usagestatsd.ray_tags import RAY_TAG_KEYS
from usagestatsd.report import Report

# Each field's shape (what a legitimate value looks like) or limit is declared with the
# field (fields.py). The guard checks them by kind, in this order (the order of its findings).
_STRINGS = tuple(f for f in FIELDS if f.json is Json.STRING and f.shape is not None)
_LISTS = tuple(f for f in FIELDS if f.json is Json.STRING_LIST)
_TAGS = BY_NAME["extra_usage_tags"]
_NUMBERS = tuple(
    f
    for kind in (Json.INTEGER, Json.NUMBER)
    for f in FIELDS
    if f.json is kind and f.limit is not None
)

_IPV4 = re.compile(r"(?<![0-9.])(?:[0-9]{1,3}[.\-_]){3}[0-9]{1,3}(?![0-9])")
_IPV6_CANDIDATE = re.compile(r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*")
_MAC = re.compile(r"(?i)(?<![0-9a-f])[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}(?![0-9a-f])")
_EMAIL = re.compile(r"[^\s@]+@[^\s@]+")
_PATH = re.compile(r"(^|[\s=:,])(~|/|\\|[A-Za-z]:\\)|/[A-Za-z0-9._-]")
_URL = re.compile(r"(?i)[a-z][a-z0-9+.-]*://")
# A dotted name ending in a common or country-code top-level domain (or a private one such
# as .local or .internal). Library names like util.multiprocessing.Pool must not match.
_TLDS = (
    "com|net|org|edu|gov|mil|int|io|ai|dev|app|cloud|tech|info|biz|xyz|online|site|"
    "local|localdomain|internal|intranet|lan|corp|home|private|test|example|invalid|arpa|"
    "[a-z]{2}"
)
_FQDN = re.compile(
    r"(?<![A-Za-z0-9-])(?:[A-Za-z0-9-]{1,63}\.)+(?:" + _TLDS + r")(?![A-Za-z0-9])", re.I
)
# Host names whose last label is no public suffix (db7.prod.acme.corpnet): three or more
# lower-case labels, or four or more in any case. Ray's library names (util.ActorPool,
# util.multiprocessing.Pool) have a capital or fewer labels; instance types such as
# ml.g5.xlarge end in a size word and are let through.
_DOTTED_HOST = re.compile(
    r"(?<![A-Za-z0-9.-])(?:(?:[a-z0-9-]{1,63}\.){2,}[a-z][a-z0-9-]{0,62}"
    r"|(?:[A-Za-z0-9-]{1,63}\.){3,}[A-Za-z][A-Za-z0-9-]{0,62})(?![A-Za-z0-9.-])"
)
_SIZE_WORD = re.compile(r"(?i).*\.(nano|micro|small|medium|large|[0-9]*xlarge|metal)")
# Cisco's form of a MAC address: 001a.2b3c.4d5e.
_MAC_DOTTED = re.compile(r"(?i)(?<![0-9a-f.])[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}(?![0-9a-f.])")
# IPv4 in the other forms inet_aton() takes: one number (167772161), hex (0x0a000001), and
# short dotted forms (10.1, 10.0.1). A short form is only taken for an address when it lands
# in a private, loopback, link-local or shared range: 3.11 is a Python version, not 3.0.0.11.
_INT_TOKEN = re.compile(r"(?<![0-9A-Za-z.])(?:0x[0-9a-f]{1,8}|[0-9]{8,10})(?![0-9A-Za-z.])", re.I)
_SHORT_DOTTED = re.compile(r"(?<![0-9.])[0-9]{1,3}(?:\.[0-9]{1,8}){1,2}(?![0-9.])")
_LOCAL_NETS = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "10.0.0.0/8",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
    )
)
# AWS: a 12-digit account id, an ARN, an access key id (AKIA..., ASIA... and the other
# documented prefixes followed by 16 upper-case letters or digits).
# As a token of its own: a run of 12 digits inside a hex id (session_id, git_commit) is not one.
_AWS_ACCOUNT = re.compile(r"(?<![0-9A-Za-z])[0-9]{12}(?![0-9A-Za-z])")
_ARN = re.compile(r"(?i)(?<![a-z0-9])arn:aws[a-z-]*:")
_AWS_KEY = re.compile(  # any case: a lower-cased key (cloud_provider is lower-cased) still leaks
    r"(?i)(?<![A-Z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|APKA|ABIA|ACCA)[A-Z0-9]{16}"
    r"(?![A-Z0-9])"
)
# A secret written as name=value or name: value (password=..., api_key: ...).
_SECRET_WORDS = (
    r"pass(?:word|wd|phrase)?|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|"
    r"credentials?|auth"
)
_SECRET = re.compile(r"(?i)(?:" + _SECRET_WORDS + r")\s*[=:]")
_SECRET_NAME = re.compile(r"(?i)(?:^|[^a-z])(?:" + _SECRET_WORDS + r")(?:$|[^a-z])")
# A personal name as free text writes it: two or more capitalised words ("Alice Smith",
# "Smith, Alice"). A name alone ("alice") cannot be told from a word; the operator's own tag
# values are held to a single token (settings.parse_extra_tags), and the provider's tag
# names to Ray's own (ray_tags.py).
_FULL_NAME = re.compile(r"(?<![A-Za-z])[A-Z][a-z]+(?:,? +(?:[A-Z]\.|[A-Z][a-z]+))+(?![A-Za-z])")
_TOKEN_SPLIT = re.compile(r"[^A-Za-z0-9-]+")
_WORD_SPLIT = re.compile(r"[^A-Za-z0-9]+")


@dataclass(frozen=True)
class KnownIdentifiers:
    """This machine's own names, which must never appear in a report (collected at start)."""

    host_names: frozenset[str] = frozenset()
    user_names: frozenset[str] = frozenset()
    home_dirs: frozenset[str] = frozenset()

    @staticmethod
    def of(
        host_names: Iterable[str], user_names: Iterable[str], home_dirs: Iterable[str]
    ) -> KnownIdentifiers:
        """Normalise (lower-case, drop empties) what the caller collected."""
        hosts = set()
        for name in host_names:
            name = name.strip().lower()
            if name and name != "localhost":
                hosts.add(name)
                hosts.add(name.split(".")[0])
        return KnownIdentifiers(
            host_names=frozenset(hosts),
            user_names=frozenset(u.strip().lower() for u in user_names if len(u.strip()) >= 2),
            home_dirs=frozenset(h for h in home_dirs if h not in ("", "/")),
        )


@dataclass(frozen=True)
class Redaction:
    """One value the guard removed: which field, and what kind of identifier it looked like."""

    field: str
    reason: str


@dataclass
class _Pass:
    known: KnownIdentifiers
    redactions: list[Redaction] = field(default_factory=list)

    def problem(self, value: str, shape: re.Pattern[str] | None) -> str | None:
        reason = identifying_reason(value, self.known)
        if reason:
            return reason
        if shape is None or not shape.fullmatch(value):  # no declared shape: nothing passes
            return "unexpected characters or length"
        return None

    def scalar(self, name: str, value: str | None, shape: re.Pattern[str] | None) -> str | None:
        if value is None:
            return None
        if name == "session_id" and shape is not None and shape.fullmatch(value):
            # Random by construction (a UUID, hex): its digit runs are not addresses or
            # account ids (about 1 UUID in 40 looked like one, and its session crashed).
            return value
        reason = self.problem(value, shape)
        if reason:
            self.redactions.append(Redaction(name, reason))
            return None
        return value

    def items(
        self, name: str, values: Iterable[str], shape: re.Pattern[str] | None
    ) -> tuple[str, ...]:
        kept = []
        for value in values:
            reason = self.problem(value, shape)
            if reason:
                self.redactions.append(Redaction(name, reason))
            else:
                kept.append(value)
        return tuple(kept)

    def tags(self, tags: Mapping[str, str]) -> dict[str, str]:
        kept: dict[str, str] = {}
        for index, (key, value) in enumerate(tags.items()):
            key_reason = self.problem(key, _TAGS.key_shape) or (
                "secret" if _SECRET_NAME.search(key) else None
            )
            if key_reason:
                # The key itself is suspect: do not echo it, name its position.
                self.redactions.append(Redaction(f"extra_usage_tags[#{index}]", key_reason))
                continue
            if _is_ray_count(key, value):
                kept[key] = value
                continue
            value_reason = self.problem(value, _TAGS.shape) or (
                "personal name" if _FULL_NAME.search(value) else None
            )
            if value_reason:
                self.redactions.append(Redaction(f"extra_usage_tags.{key}", value_reason))
                continue
            kept[key] = value
        return kept

    def number(self, spec: Field, value: float | None) -> Any:
        if value is None or spec.limit is None:
            return value
        if spec.json is Json.INTEGER:
            ok = isinstance(value, int) and 0 <= value <= spec.limit
        else:
            ok = math.isfinite(value) and 0 <= value <= spec.limit
        if not ok:
            self.redactions.append(Redaction(spec.name, "number out of range"))
            return None
        return value


def _is_ray_count(key: str, value: str) -> bool:
    """A count under one of Ray's counting tags (num_normal_tasks: 20000000): a number, not
    an address, however large (a busy cluster runs more than 2**24 tasks)."""
    return (
        key in RAY_TAG_KEYS
        and "num" in key
        and value.isascii()
        and value.isdigit()
        and len(value) <= 15
    )


def _looks_like_ipv6(value: str) -> bool:
    for candidate in _IPV6_CANDIDATE.findall(value):
        # As found, without surrounding dots ("at fe80::1."), and without dots and colons.
        for text in (candidate, candidate.strip("."), candidate.strip(".:")):
            try:
                ipaddress.IPv6Address(text)
                return True
            except ValueError:
                continue
    return False


def _looks_like_other_ipv4(value: str) -> bool:
    for token in _INT_TOKEN.findall(value):
        number = int(token, 16) if token[:2].lower() == "0x" else int(token)
        if token[:2].lower() == "0x" or number >= 1 << 24:
            return number < 1 << 32
    for token in _SHORT_DOTTED.findall(value):
        try:
            address = ipaddress.IPv4Address(socket.inet_aton(token))
        except (OSError, ValueError):
            continue
        if any(address in net for net in _LOCAL_NETS):
            return True
    return False


def _looks_like_host(value: str) -> bool:
    return any(not _SIZE_WORD.fullmatch(m.group()) for m in _DOTTED_HOST.finditer(value))


def identifying_reason(value: str, known: KnownIdentifiers) -> str | None:
    """Why a string looks like it identifies a person, host or address; None if it does not."""
    checks = (
        (_URL.search(value), "URL"),
        (_EMAIL.search(value), "e-mail address"),
        (_ARN.search(value), "AWS ARN"),
        (_AWS_KEY.search(value), "AWS access key"),
        (_SECRET.search(value), "secret"),
        (_MAC.search(value) or _MAC_DOTTED.search(value), "MAC address"),
        (_IPV4.search(value), "IPv4 address"),
        (_AWS_ACCOUNT.search(value), "AWS account id"),
        (_looks_like_other_ipv4(value), "IPv4 address"),
        (_looks_like_ipv6(value), "IPv6 address"),
        (_PATH.search(value), "file system path"),
        (_FQDN.search(value) or _looks_like_host(value), "host name"),
    )
    for hit, reason in checks:
        if hit:
            return reason
    lowered = value.lower()
    if any(home in value for home in known.home_dirs):
        return "home directory"
    tokens = {t for t in _TOKEN_SPLIT.split(lowered) if t}
    # Also the parts between hyphens: "alice-laptop" or "node-alice-1" name alice too.
    tokens |= {t for t in _WORD_SPLIT.split(lowered) if t}
    if lowered in known.host_names or tokens & known.host_names:
        return "this machine's host name"
    if lowered in known.user_names or tokens & known.user_names:
        return "a local user name"
    return None


def guard(report: Report, known: KnownIdentifiers) -> tuple[Report, list[Redaction]]:
    """The report with every identifying or malformed value removed, and what was removed."""
    run = _Pass(known)
    changes: dict[str, Any] = {
        f.name: run.scalar(f.name, getattr(report, f.name), f.shape) for f in _STRINGS
    }
    for f in _LISTS:
        if getattr(report, f.name) is not None:
            changes[f.name] = run.items(f.name, getattr(report, f.name), f.shape)
    changes[_TAGS.name] = run.tags(getattr(report, _TAGS.name))
    for f in _NUMBERS:
        changes[f.name] = run.number(f, getattr(report, f.name))
    if changes["session_id"] is None:
        # session_id is never null: a bad one means a bug upstream, so refuse loudly.
        raise ValueError("session_id failed the privacy guard")
    if changes["source"] is None:
        changes["source"] = "OSS"
    return report.with_fields(**changes), run.redactions
