"""What identifies a person, host or address in a string: the privacy guard's detectors.

Pure, and linear in the length of the value: no pattern here can backtrack over a long run
from many starting points (a repeated `(label\\.)+` group tried after every dot costs
quadratic time on `a.a.a.a...`), and free repetitions are bounded. Each detector is
skipped outright when the value lacks the character it needs (no `@`, no e-mail). The
guard caps every value to its field's length, and the text of a whole report, before it
gets here (contract/guard.py).
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class KnownIdentifiers:
    """This machine's own names, which must never appear in a report (collected at start).

    `user_names` are the human accounts: caught anywhere in a value, even as a part of it
    (`node-alice-1`). `account_names` are every local account, system ones included: a
    value (or an item of a comma list) that *is* one is refused, since a Ray job can set a
    tag to any word and a lone account name (`postgres`, `jdoe`) names someone here.
    """

    host_names: frozenset[str] = frozenset()
    user_names: frozenset[str] = frozenset()
    home_dirs: frozenset[str] = frozenset()
    account_names: frozenset[str] = frozenset()

    @staticmethod
    def of(
        host_names: Iterable[str],
        user_names: Iterable[str],
        home_dirs: Iterable[str],
        account_names: Iterable[str] = (),
    ) -> KnownIdentifiers:
        """Normalise (lower-case, drop empties) what the caller collected."""
        hosts = set()
        for name in host_names:
            name = name.strip().lower()
            if name and name != "localhost":
                hosts.add(name)
                hosts.add(name.split(".")[0])
        users = frozenset(u.strip().lower() for u in user_names if len(u.strip()) >= 2)
        accounts = frozenset(a.strip().lower() for a in account_names if len(a.strip()) >= 2)
        return KnownIdentifiers(
            host_names=frozenset(hosts),
            user_names=users,
            home_dirs=frozenset(h for h in home_dirs if h not in ("", "/")),
            account_names=accounts | users,
        )


_IPV4 = re.compile(r"(?<![0-9.])(?:[0-9]{1,3}[.\-_]){3}[0-9]{1,3}(?![0-9])")
# Four numbers joined by commas or colons (192,168,1,20): exactly four, so that a list of
# counts of another length is not taken for one.
_IPV4_LISTED = re.compile(
    r"(?<![0-9])(?<![0-9][,:])([0-9]{1,3})([,:])([0-9]{1,3})\2([0-9]{1,3})\2([0-9]{1,3})"
    r"(?![0-9])(?![,:][0-9])"
)
_HEX_RUN = re.compile(r"[0-9A-Fa-f:.]+")
_DASHED_HEX_RUN = re.compile(r"[0-9A-Fa-f-]+")
_MAC = re.compile(r"(?i)(?<![0-9a-f])[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}(?![0-9a-f])")
# Cisco's form of a MAC address (001a.2b3c.4d5e), and the bare form (001a2b3c4d5e) as a token
# of its own (not a group of a dashed UUID, not a run inside a longer hex id; all
# digits is an AWS account id).
_MAC_DOTTED = re.compile(r"(?i)(?<![0-9a-f.])[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}(?![0-9a-f.])")
_MAC_BARE = re.compile(
    r"(?i)(?<![0-9a-z_-])(?=[a-f]{0,11}[0-9])(?=[0-9]{0,11}[a-f])[0-9a-f]{12}(?![0-9a-z_-])"
)
_EMAIL = re.compile(r"[^\s@]@[^\s@]")
_PATH = re.compile(r"(^|[\s=:,])(~|/|\\|[A-Za-z]:\\)|/[A-Za-z0-9._-]")
_URL = re.compile(r"(?i)[a-z][a-z0-9+.-]{0,31}://")
# A name then a dot then a common or country-code top-level domain (or a private one such as
# .local or .internal): one label is enough, and matching only one (not a repeated
# `(label\.)+` group, which is tried again after every dot of a.a.a.a...) keeps this linear.
# Library names like util.multiprocessing.Pool must not match.
_TLDS = (
    "com|net|org|edu|gov|mil|int|io|ai|dev|app|cloud|tech|info|biz|xyz|online|site|"
    "local|localdomain|internal|intranet|lan|corp|home|private|test|example|invalid|arpa|"
    "[a-z]{2}"
)
_FQDN = re.compile(
    r"(?<![A-Za-z0-9-])[A-Za-z0-9-]{1,63}\.(?:" + _TLDS + r")(?![A-Za-z0-9])", re.I | re.A
)
# Host names whose last label is no public suffix (db7.prod.acme.corpnet): three or more
# lower-case labels, or four or more in any case. Ray's library names (util.ActorPool,
# util.multiprocessing.Pool) have a capital or fewer labels; instance types such as
# ml.g5.xlarge end in a size word, and versions (3.0.0.dev0) are let through. Linear: the
# lookarounds exclude dots, so a match is a whole run of name characters, tried from the
# run's start only.
_DOTTED_HOST = re.compile(
    r"(?<![A-Za-z0-9.-])(?:(?:[a-z0-9-]{1,63}\.){2,}[a-z][a-z0-9-]{0,62}"
    r"|(?:[A-Za-z0-9-]{1,63}\.){3,}[A-Za-z][A-Za-z0-9-]{0,62})(?![A-Za-z0-9.-])"
)
_SIZE_WORD = re.compile(r"(?i).*\.(nano|micro|small|medium|large|[0-9]*xlarge|metal)")
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
_AWS_ACCOUNT = re.compile(r"(?<![0-9A-Za-z])[0-9]{12}(?![0-9A-Za-z])")
_ARN = re.compile(r"(?i)(?<![a-z0-9])arn:aws[a-z-]{0,16}:")
_AWS_KEY = re.compile(  # any case: a lower-cased key (cloud_provider is lower-cased) still leaks
    r"(?i)(?<![A-Z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|APKA|ABIA|ACCA)[A-Z0-9]{16}"
    r"(?![A-Z0-9])"
)
# A secret written as name=value or name: value (password=..., api_key: ...).
SECRET_WORDS = (
    r"pass(?:word|wd|phrase)?|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|"
    r"credentials?|auth"
)
_SECRET = re.compile(r"(?i)(?:" + SECRET_WORDS + r")\s{0,16}[=:]")


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _ipv6_in(run: str, separator: str) -> bool:
    """Whether a run of hex digits and separators holds an IPv6 address: as it is, without
    surrounding dots, or with its first and last groups cut to four digits (ab2001:db8::1)."""
    if run.count(separator) < 2:
        return False
    if separator != ":":
        run = run.replace(separator, ":")
    first, _, rest = run.partition(":")
    middle, _, last = rest.rpartition(":")
    trimmed = f"{first[-4:]}:{middle}:{last[:4]}"
    candidates = (run, run.strip("."), run.strip(".:"), trimmed)
    # The longest IPv6 text is 45 characters: a longer candidate is no address.
    return any(len(text) <= 45 and _is_ipv6(text) for text in candidates)


def _looks_like_ipv6(value: str) -> bool:
    if value.count(":") >= 2 and any(_ipv6_in(m.group(), ":") for m in _HEX_RUN.finditer(value)):
        return True
    # With dashes for colons, as in host names made of addresses (2001-db8--1).
    return "--" in value and any(_ipv6_in(m.group(), "-") for m in _DASHED_HEX_RUN.finditer(value))


def _looks_like_ipv4(value: str) -> bool:
    if _IPV4.search(value):
        return True
    for m in _IPV4_LISTED.finditer(value):
        if all(int(m.group(i)) <= 255 for i in (1, 3, 4, 5)):
            return True
    return False


def _looks_like_other_ipv4(value: str) -> bool:
    for token in _INT_TOKEN.findall(value):
        number = int(token, 16) if token[:2].lower() == "0x" else int(token)
        if token[:2].lower() == "0x" or number >= 1 << 24:
            return number < 1 << 32
    if "." not in value:
        return False
    for token in _SHORT_DOTTED.findall(value):
        try:
            address = ipaddress.IPv4Address(socket.inet_aton(token))
        except (OSError, ValueError):
            continue
        if any(address in net for net in _LOCAL_NETS):
            return True
    return False


_DOTTED_VERSION = re.compile(r"[0-9]{1,4}\.[0-9]{1,4}\.[0-9]{1,4}\.(?:dev|post)[0-9]{0,4}")


def _is_version(name: str) -> bool:
    """A release's dev or post form, such as Ray's nightly 3.0.0.dev0: not a host."""
    return _DOTTED_VERSION.fullmatch(name) is not None


def _looks_like_host(value: str) -> bool:
    return any(
        not (_SIZE_WORD.fullmatch(m.group()) or _is_version(m.group()))
        for m in _DOTTED_HOST.finditer(value)
    )


def _is_mac(value: str) -> bool:
    return bool(_MAC.search(value) or _MAC_DOTTED.search(value) or _MAC_BARE.search(value))


# (needs, check, reason): a check runs only when the value holds one of the characters in
# `needs` (None: always). In this order: the first hit names the reason.
_Check = tuple[frozenset[str] | None, Callable[[str], object], str]
_DIGITS = "0123456789"
_CHECKS: tuple[_Check, ...] = (
    (frozenset(":"), _URL.search, "URL"),
    (frozenset("@"), _EMAIL.search, "e-mail address"),
    (frozenset(":"), _ARN.search, "AWS ARN"),
    (None, _AWS_KEY.search, "AWS access key"),
    (frozenset("=:"), _SECRET.search, "secret"),
    (frozenset(":-." + _DIGITS), _is_mac, "MAC address"),
    (frozenset(_DIGITS), _looks_like_ipv4, "IPv4 address"),
    (frozenset(_DIGITS), _AWS_ACCOUNT.search, "AWS account id"),
    (frozenset(_DIGITS), _looks_like_other_ipv4, "IPv4 address"),
    (frozenset(":-"), _looks_like_ipv6, "IPv6 address"),
    (frozenset("/\\~"), _PATH.search, "file system path"),
    (frozenset("."), lambda v: _FQDN.search(v) or _looks_like_host(v), "host name"),
)


@functools.lru_cache(maxsize=8)
def _patterns(known: KnownIdentifiers) -> tuple[re.Pattern[str] | None, ...]:
    """One pattern per kind of this machine's names, built once: a name counts as a part of
    a value between non-alphanumerics ("alice-laptop" and "node-alice-1" name alice)."""

    def names(words: Iterable[str]) -> re.Pattern[str] | None:
        alternatives = "|".join(sorted(map(re.escape, words), key=len, reverse=True))
        return re.compile(rf"(?<![a-z0-9])(?:{alternatives})(?![a-z0-9])") if words else None

    homes = "|".join(sorted(map(re.escape, known.home_dirs), key=len, reverse=True))
    return (
        re.compile(homes) if homes else None,
        names(known.host_names),
        names(known.user_names),
    )


def _known_reason(value: str, known: KnownIdentifiers) -> str | None:
    homes, hosts, users = _patterns(known)
    if homes is not None and homes.search(value):
        return "home directory"
    lowered = value.lower()
    if hosts is not None and hosts.search(lowered):
        return "this machine's host name"
    if users is not None and users.search(lowered):
        return "a local user name"
    items = {lowered, *(item.strip() for item in lowered.split(","))} if "," in value else {lowered}
    if not items.isdisjoint(known.account_names):
        return "a local account name"
    return None


def identifying_reason(value: str, known: KnownIdentifiers) -> str | None:
    """Why a string looks like it identifies a person, host or address; None if it does not."""
    present = frozenset(value)
    for needs, check, reason in _CHECKS:
        if needs is not None and needs.isdisjoint(present):
            continue
        if check(value):
            return reason
    return _known_reason(value, known)
