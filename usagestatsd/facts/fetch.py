"""One bounded, peer-checked GET of a local source: a Unix socket or the loopback dashboard.

Split from `facts/cluster.py` (which decides what to ask and puts the answers together): here is
how one request is made safe. No symlink is followed to a socket, the peer's uid and bound
path are checked before a byte is sent (docs/security.md), and each request has a timeout,
a size cap and a decode cap (`Cap`, per source). Every failure is one `SourceError`, whose
`failure` says what kind it is when that matters to a decision (`cycle/refusal.py`).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import socket
import stat
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any

import aiohttp

from usagestatsd.base.hostport import host_port
from usagestatsd.facts.connectors import CheckedTCPConnector, CheckedUnixConnector, PeerCheck
from usagestatsd.facts.peers import unix_peer, unix_peer_path
from usagestatsd.facts.session import trusted_uids
from usagestatsd.facts.sources import Failure, SourceError, decode_json


@dataclass(frozen=True)
class Cap:
    """What one source may answer: bytes, and the memory its decode may take (estimated
    before decoding by `sources.decode_cost`).

    Sized from what each serves, measured on Ray 2.60 (docs/security.md, "Bounded"):
    cluster_status is ~470 bytes and ~2.6 KiB of decode cost per node (10,000 nodes:
    4.5 MiB, 25 MiB), a job entry ~570 bytes and ~3.8 KiB (10,000 jobs: 5.5 MiB, 37 MiB),
    the provider a few KB. So 8 MiB and 40 MiB leave room for ~16,000 nodes or ~11,000
    jobs, and whatever a source sends, one decode stays near 40 MiB.
    """

    max_bytes: int
    max_decode_bytes: int
    error_words: bool = False  # Limits.error_words


CAPS: dict[str, Cap] = {
    "/api/v0/cluster_metadata": Cap(64 << 10, 1 << 20),
    "/api/cluster_status": Cap(8 << 20, 40 << 20),
    "/api/jobs/": Cap(8 << 20, 40 << 20),
    "/v1/usage": Cap(256 << 10, 4 << 20, error_words=True),  # the provider's own sentences
}


@dataclass(frozen=True)
class Limits:
    """Per-request bounds for local sources, and the uids allowed to serve them."""

    timeout_s: float = 5.0
    max_bytes: int = 32 << 20
    max_decode_bytes: int = 40 << 20
    trusted_uids: frozenset[int] = field(default_factory=trusted_uids)
    # Whether a refusal's body is shown: only the provider's own sentences, as another
    # source's could carry anything.
    error_words: bool = False


def unix_peer_check(
    socket_path: Path,
    source: str,
    trusted_uids: Collection[int],
    aliases: Collection[str] = (),
    bound_as: Collection[str] = (),
) -> PeerCheck:
    """The check run on a connected Unix socket before a byte is sent or trusted.

    The kernel's word only: `SO_PEERCRED` names the uid that listens (any
    local user can bind a name in Ray's 0777 `sockets/`), and the peer must have bound its
    socket in the directory asked for (a symlink swapped in before the
    connect leads elsewhere). The directory, not the name: a server may bind a temporary name and
    rename it into place (the provider does, so the name appears at once and whole).
    `aliases` are other spellings of the same path (the temp root as configured, before
    symlinks in it were resolved), which is how Ray names its sockets.

    `bound_as`: the exact paths the peer must have bound (for a socket found under another
    name than the one Ray gave it: the kernel still names the path it was bound at).
    """
    expected = {os.path.dirname(p) for p in (str(socket_path), *aliases)}

    def check(sock: socket.socket | None) -> None:
        if sock is None:
            raise SourceError(source, "refused: no socket to check the peer of")
        peer = unix_peer(sock)
        if peer.uid not in trusted_uids:
            raise SourceError(
                source,
                f"refused: served by uid {peer.uid}, not by Ray's user (trusted uids: "
                f"{', '.join(map(str, sorted(trusted_uids)))}; see ray_user in "
                "docs/configuration.md)",
            )
        bound = unix_peer_path(sock)
        if bound_as and bound not in bound_as:
            raise SourceError(source, "refused: the socket answering was bound under another name")
        if os.path.dirname(bound) not in expected:
            raise SourceError(
                source, "refused: the socket answering was bound in another directory"
            )

    return check


async def fetch_tcp_json(
    address: tuple[str, int], url_path: str, source: str, limits: Limits, check: PeerCheck
) -> Any:
    """GET `url_path` from the loopback HTTP server at `address` once `check` accepts its
    listener (for the dashboard: dashboard.verify_listener), strict JSON, same caps."""
    base = f"http://{host_port(*address)}"
    try:
        return await asyncio.wait_for(
            _get(
                Path(base),  # names a socket file only in the EACCES hint, never for TCP
                url_path,
                source,
                limits,
                check,
                connector=CheckedTCPConnector(check),
                base_url=base,
            ),
            limits.timeout_s,
        )
    except TimeoutError:
        raise SourceError(source, f"no complete answer within {limits.timeout_s:g}s") from None


async def fetch_unix_json(
    socket_path: Path,
    url_path: str,
    source: str,
    limits: Limits,
    aliases: Collection[str] = (),
    bound_as: Collection[str] = (),
) -> Any:
    """GET `url_path` over the Unix socket from a trusted peer, read at most `max_bytes`,
    decode strict JSON. With `bound_as`, the peer must have bound exactly one of those paths."""
    try:
        fd = pin_socket_file(socket_path)
    except FileNotFoundError:
        raise SourceError(source, f"socket {socket_path} is absent", Failure.ABSENT) from None
    except OSError as exc:
        raise SourceError(source, f"cannot look at {socket_path}: {exc.strerror}") from None
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise SourceError(source, f"{socket_path} is not a socket")
        check = unix_peer_check(socket_path, source, limits.trusted_uids, aliases, bound_as)
        # Connecting through the pinned descriptor reaches exactly the socket file that was
        # checked: a name swapped meanwhile is not followed.
        return await asyncio.wait_for(
            _get(socket_path, url_path, source, limits, check, via=f"/proc/self/fd/{fd}"),
            limits.timeout_s,
        )
    except TimeoutError:
        raise SourceError(source, f"no complete answer within {limits.timeout_s:g}s") from None
    finally:
        os.close(fd)


# Ray's sockets that do not speak HTTP: never connected to while looking for a renamed one.
NOT_HTTP = ("raylet", "plasma_store")
MAX_ENTRIES = 1024  # of sockets/ looked at; a directory stuffed beyond that hides nothing more
MAX_PROBES = 16  # connections made to find a renamed socket


def find_renamed(
    sockets_dir: Path, bound_as: Collection[str], trusted: Collection[int], skip: Collection[str]
) -> Path | None:
    """The socket in `sockets_dir` that a trusted uid bound at one of `bound_as`, now under
    another name (anyone may rename entries of Ray's 0777 `sockets/`); None if none is.

    Only socket files owned by a trusted uid are tried (bind() makes the file, owned by
    the binder, and a rename keeps it), names in `skip` and Ray's non-HTTP sockets never,
    and each is vouched for by the kernel before it is used: the listener's uid and the
    path it bound, which a rename does not change.
    """
    try:
        with os.scandir(sockets_dir) as listing:
            names = sorted(e.name for e in islice(listing, MAX_ENTRIES))
    except OSError:
        return None
    probes = 0
    for name in names:
        if probes >= MAX_PROBES:
            break
        if name in skip or name.startswith(NOT_HTTP):
            continue
        path = sockets_dir / name
        try:
            st = path.lstat()
        except OSError:
            continue
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid not in trusted:
            continue
        probes += 1
        if _bound_at(path, bound_as, trusted):
            return path
    return None


def _bound_at(path: Path, bound_as: Collection[str], trusted: Collection[int]) -> bool:
    """Whether a trusted uid listens on socket file `path`, bound at one of `bound_as`."""
    try:
        fd = pin_socket_file(path)
    except OSError:
        return False
    try:
        with socket.socket(socket.AF_UNIX) as probe:
            probe.setblocking(False)  # a full backlog is a refusal, never a wait
            probe.connect(f"/proc/self/fd/{fd}")
            return unix_peer(probe).uid in trusted and unix_peer_path(probe) in bound_as
    except OSError:
        return False
    finally:
        os.close(fd)


def pin_socket_file(socket_path: Path) -> int:
    """An O_PATH descriptor on `socket_path`, reached without following any symlink.

    Every component is opened relative to the one before with O_NOFOLLOW, so a symlink
    anywhere on the way (Ray's directories are 0777: anyone can plant one) is refused with
    ELOOP or ENOTDIR instead of being followed. Callers pass resolved paths.
    """
    if not socket_path.is_absolute():
        raise OSError(errno.EINVAL, "not an absolute path")
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY)
    try:
        parts = socket_path.parts[1:]
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = os.O_PATH | os.O_NOFOLLOW | (0 if last else os.O_DIRECTORY)
            nxt = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = nxt
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            raise OSError(errno.ELOOP, "a symbolic link, not a socket")
        return fd
    except BaseException:
        os.close(fd)
        raise


async def _get(
    socket_path: Path,
    url_path: str,
    source: str,
    limits: Limits,
    check: PeerCheck,
    via: str | None = None,
    connector: aiohttp.BaseConnector | None = None,
    base_url: str = "http://localhost",
) -> Any:
    # The peer is checked right after the connect, before the request is sent: nothing
    # goes to, and nothing is read from, a process that is not Ray's (docs/security.md).
    connector = connector or CheckedUnixConnector(via or str(socket_path), check)
    try:
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            http.get(f"{base_url}{url_path}", allow_redirects=False) as response,
        ):
            if response.status != 200:
                words = limits.error_words
                body = await response.content.read(ERROR_BODY_MAX_BYTES) if words else b""
                why = error_text(body)
                suffix = f": {why}" if why else ""
                raise SourceError(source, f"HTTP status {response.status}{suffix}")
            # Chunks joined once: a reply arriving in many small pieces then costs linear
            # time, where `body += chunk` would copy everything read so far at each piece.
            chunks: list[bytes] = []
            size = 0
            while size <= limits.max_bytes:
                chunk = await response.content.read(limits.max_bytes + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            if size > limits.max_bytes:
                raise SourceError(source, f"reply larger than {limits.max_bytes} bytes")
            body = b"".join(chunks)
            chunks.clear()  # not twice in memory while it is decoded
    except aiohttp.ClientConnectionError as exc:
        os_error = getattr(exc, "os_error", None)
        reason = getattr(os_error, "strerror", None) or type(exc).__name__
        if getattr(os_error, "errno", None) == errno.EACCES:
            reason += (
                "; connecting needs write permission on Ray's socket: run usagestatsd as the "
                "user that started Ray (see docs/running-as-ray-user.md; "
                f"'stat -c %U {socket_path}' names that user)"
            )
        refused = getattr(os_error, "errno", None) == errno.ECONNREFUSED
        failure = Failure.NOBODY_LISTENS if refused else Failure.OTHER
        raise SourceError(source, f"connection failed ({reason})", failure) from None
    except aiohttp.ClientError as exc:
        raise SourceError(source, f"bad HTTP reply ({type(exc).__name__})") from None
    return decode_json(source, body, limits.max_decode_bytes)


ERROR_BODY_MAX_BYTES = 4096
ERROR_TEXT_MAX_CHARS = 200
_ADDRESS = re.compile(
    r"\b\d{1,3}(?:\.\d{1,3}){3}\b|(?:[0-9A-Fa-f]{0,4}:){2,}[0-9A-Fa-f]{0,4}(?:%\w+)?"
)


def error_text(body: bytes) -> str | None:
    """The `error` sentence of a JSON error reply (the provider's 503 says why it cannot
    read the cluster), or None: one line of printable ASCII, addresses masked, bounded."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, str):
        return None
    text = "".join(c if c.isascii() and c.isprintable() else " " for c in error)
    text = _ADDRESS.sub("<address>", " ".join(text.split()))
    if len(text) > ERROR_TEXT_MAX_CHARS:
        text = text[: ERROR_TEXT_MAX_CHARS - 3] + "..."
    return text or None


def capped(limits: Limits, path: str) -> Limits:
    """The limits for one source: its own cap, which socket_max_bytes can only lower."""
    cap = CAPS.get(path)
    if cap is None:
        return limits
    return replace(
        limits,
        max_bytes=min(cap.max_bytes, limits.max_bytes),
        max_decode_bytes=cap.max_decode_bytes,
        error_words=cap.error_words,
    )
