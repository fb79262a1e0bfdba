"""What identifies a person, host or address in a string: the privacy guard's detectors.

Pure, and linear in the length of the value. No pattern here has an unbounded quantifier
that can backtrack over a long run (a repeated `(label\\.)+` group costs quadratic time on
`a.a.a.a...`): dotted and dashed names are split and their labels checked, and every other
repetition is bounded. Each detector is skipped outright when the value lacks the character
it needs (no `@`, no e-mail). The guard caps every value to its field's length before it
gets here (privacy.py), so the work per report is bounded twice.
"""

from __future__ import annotations

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
_TLDS = frozenset(
    [
        "com",
        "net",
        "org",
        "edu",
        "gov",
        "mil",
        "int",
        "io",
        "ai",
        "dev",
        "app",
        "cloud",
        "tech",
        "info",
        "biz",
        "xyz",
        "online",
        "site",
        "local",
        "localdomain",
        "internal",
        "intranet",
        "lan",
        "corp",
        "home",
        "private",
        "test",
        "example",
        "invalid",
        "arpa",
    ]
)
_NAME_RUN = re.compile(r"[A-Za-z0-9-]+")
_HOST_RUN = re.compile(r"[A-Za-z0-9.-]+")
_LABEL = re.compile(r"[A-Za-z0-9-]{1,63}")
_LOWER_LABEL = re.compile(r"[a-z0-9-]{1,63}")
_SIZE_WORDS = re.compile(r"(?i)nano|micro|small|medium|large|[0-9]{0,3}xlarge|metal")
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
_TOKEN_SPLIT = re.compile(r"[^A-Za-z0-9-]+")
_WORD_SPLIT = re.compile(r"[^A-Za-z0-9]+")


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
    return any(_is_ipv6(text) for text in (run, run.strip("."), run.strip(".:"), trimmed))


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


def _is_tld(label: str) -> bool:
    """A common or country-code top-level domain, or a private one such as .local: the
    label's letters up to a hyphen (db.example.com-1 ends in com)."""
    head = label.split("-", 1)[0].lower()
    return head in _TLDS or (len(head) == 2 and head.isascii() and head.isalpha())


def _looks_like_fqdn(value: str) -> bool:
    """A name (1-63 letters, digits, hyphens) then a dot then a top-level domain.

    Library names like util.multiprocessing.Pool must not match: Pool is no TLD.
    """
    if "." not in value:
        return False
    previous = None
    for match in _NAME_RUN.finditer(value):
        if (
            previous is not None
            and previous.end() + 1 == match.start()
            and value[previous.end()] == "."
            and len(previous.group()) <= 63
            and _is_tld(match.group())
        ):
            return True
        previous = match
    return False


def _is_dotted_host(run: str) -> bool:
    """Host names whose last label is no public suffix (db7.prod.acme.corpnet): three or
    more lower-case labels, or four or more in any case. Ray's library names
    (util.ActorPool, util.multiprocessing.Pool) have a capital or fewer labels; instance
    types such as ml.g5.xlarge end in a size word and are let through."""
    labels = run.split(".")
    last = labels[-1]
    if not (1 <= len(last) <= 63 and last[0].isascii() and last[0].isalpha()):
        return False
    if _SIZE_WORDS.fullmatch(last):
        return False
    if len(labels) >= 3 and all(_LOWER_LABEL.fullmatch(label) for label in labels):
        return last[0].islower()
    return len(labels) >= 4 and all(_LABEL.fullmatch(label) for label in labels)


def _looks_like_host(value: str) -> bool:
    return value.count(".") >= 2 and any(
        _is_dotted_host(m.group()) for m in _HOST_RUN.finditer(value)
    )


def _is_mac(value: str) -> bool:
    return bool(_MAC.search(value) or _MAC_DOTTED.search(value) or _MAC_BARE.search(value))


# (needs, check, reason): a check runs only when the value holds one of `needs` (an empty
# tuple: always). In this order: the first hit names the reason.
_Check = tuple[tuple[str, ...], Callable[[str], object], str]
_DIGITS = tuple("0123456789")
_CHECKS: tuple[_Check, ...] = (
    (("://",), _URL.search, "URL"),
    (("@",), _EMAIL.search, "e-mail address"),
    ((":",), _ARN.search, "AWS ARN"),
    ((), _AWS_KEY.search, "AWS access key"),
    (("=", ":"), _SECRET.search, "secret"),
    ((":", "-", ".", *_DIGITS), _is_mac, "MAC address"),
    (_DIGITS, _looks_like_ipv4, "IPv4 address"),
    (_DIGITS, _AWS_ACCOUNT.search, "AWS account id"),
    (_DIGITS, _looks_like_other_ipv4, "IPv4 address"),
    ((":", "--"), _looks_like_ipv6, "IPv6 address"),
    (("/", "\\", "~"), _PATH.search, "file system path"),
    ((".",), lambda v: _looks_like_fqdn(v) or _looks_like_host(v), "host name"),
)


def _known_reason(value: str, known: KnownIdentifiers) -> str | None:
    if any(home in value for home in known.home_dirs):
        return "home directory"
    lowered = value.lower()
    tokens = {t for t in _TOKEN_SPLIT.split(lowered) if t}
    # Also the parts between hyphens: "alice-laptop" or "node-alice-1" name alice too.
    tokens |= {t for t in _WORD_SPLIT.split(lowered) if t}
    if lowered in known.host_names or tokens & known.host_names:
        return "this machine's host name"
    if lowered in known.user_names or tokens & known.user_names:
        return "a local user name"
    items = {lowered, *(item.strip() for item in lowered.split(","))}
    if items & known.account_names:
        return "a local account name"
    return None


def identifying_reason(value: str, known: KnownIdentifiers) -> str | None:
    """Why a string looks like it identifies a person, host or address; None if it does not."""
    for needs, check, reason in _CHECKS:
        if needs and not any(n in value for n in needs):
            continue
        if check(value):
            return reason
    return _known_reason(value, known)
