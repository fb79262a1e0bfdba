"""usagestatsd provider: serves the facts only Ray's GCS holds over a Unix socket.

Runs with the cluster's own Python (the one that has Ray installed). It imports
only the standard library, and Ray lazily, so that this file can be copied
anywhere and run as ``<ray-python> provider.py --temp-root /tmp/ray``.

It reads (never writes) Ray's GCS key-value store with Ray's own client, which
does not register a driver or a job, and answers ``GET /v1/usage`` on
``<session_dir>/sockets/usagestatsd_provider``. The protocol is described in
``docs/provider-protocol.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import http.server
import importlib
import inspect
import json
import os
import re
import signal
import socket
import socketserver
import stat
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass, field
from http import HTTPStatus

# typing's generics, not collections.abc's: those are subscriptable only from Python 3.9, and
# this file runs on every Python a Ray with usage stats runs on (3.7 and later).
from typing import Any, Callable, Mapping, Sequence  # noqa: UP035

PROTOCOL_VERSION = 1
SOCKET_NAME = "usagestatsd_provider"
USAGE_PATH = "/v1/usage"

USAGE_NAMESPACE = b"usage_stats"
LIBRARY_USAGE_PREFIX = b"library_usage_"
HARDWARE_USAGE_PREFIX = b"hardware_usage_"
EXTRA_USAGE_TAG_PREFIX = b"extra_usage_tag_"
SESSION_NAMESPACE = b"session"
# What `ray start` records about the cluster (versions, start time: consent), as JSON. Ray
# 2.3 and later also serve it as the dashboard's /api/v0/cluster_metadata; 1.13 to 2.2 not.
CLUSTER_NAMESPACE = b"cluster"
CLUSTER_METADATA_KEY = b"CLUSTER_METADATA"
MAX_METADATA_BYTES = 16384
SESSION_NAME_KEY = b"session_name"
RAY_INTERNAL_NAMESPACE_PREFIX = "_ray_internal"
ADDRESS_FILE = "ray_current_cluster"

DEFAULT_REQUEST_TIMEOUT_S = 5.0
DEFAULT_GCS_TIMEOUT_S = 2.0
DEFAULT_POLL_S = 2.0
MAX_VALUE_CHARS = 1024
MAX_ITEMS = 1024


class UsageUnavailable(Exception):
    """The cluster's usage facts cannot be read right now (answered with 503)."""


@dataclass(frozen=True)
class Usage:
    """What the provider knows about the cluster, read fresh for one request."""

    cluster_id: str | None
    library_usages: list[str] = field(default_factory=list)
    extra_usage_tags: dict[str, str] = field(default_factory=dict)
    hardware_usages: list[str] = field(default_factory=list)
    total_num_nodes: int | None = None
    total_num_running_jobs: int | None = None
    cluster_metadata: dict[str, object] | None = None


ReadUsage = Callable[[], Usage]


def log(event: str, **context: object) -> None:
    """Write one event line to stderr: ``provider.<event> key=value ...``."""
    parts = [f"provider.{event}"]
    for key, value in context.items():
        text = str(value)
        if not text or any(c.isspace() or c in "\"'=" for c in text):
            text = json.dumps(text)
        parts.append(f"{key}={text}")
    with contextlib.suppress(OSError, ValueError):
        print(" ".join(parts), file=sys.stderr, flush=True)


def usage_body(usage: Usage, now_ms: int) -> dict[str, object]:
    """The JSON object answered with 200 for one `Usage`."""
    return {
        "protocol_version": PROTOCOL_VERSION,
        "cluster_id": usage.cluster_id,
        "library_usages": list(usage.library_usages),
        "extra_usage_tags": dict(usage.extra_usage_tags),
        "hardware_usages": list(usage.hardware_usages),
        "total_num_nodes": usage.total_num_nodes,
        "total_num_running_jobs": usage.total_num_running_jobs,
        "cluster_metadata": usage.cluster_metadata,
        "collected_at_ms": now_ms,
    }


def error_body(message: str) -> dict[str, object]:
    """The JSON object answered with any non-200 status."""
    return {"protocol_version": PROTOCOL_VERSION, "error": message}


def _shutdown_now(executor: ThreadPoolExecutor) -> None:
    """Stop the reader without waiting; queued reads are dropped where Python can (3.9+)."""
    try:
        executor.shutdown(wait=False, cancel_futures=True)
    except TypeError:  # Python 3.7 and 3.8 have no cancel_futures
        executor.shutdown(wait=False)


# --------------------------------------------------------------------------- HTTP layer


class _Handler(http.server.BaseHTTPRequestHandler):
    """One request on the provider socket; always answers JSON and closes."""

    protocol_version = "HTTP/1.1"
    server_version = "usagestatsd-provider/1"
    timeout = 5.0
    server: _UnixHTTPServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path != USAGE_PATH:
            self._send_json(HTTPStatus.NOT_FOUND, error_body(f"no such path: {path[:100]}"))
            return
        status, body = self.server.provider.answer_usage()
        self._send_json(status, body)

    def do_HEAD(self) -> None:
        self._method_not_allowed()

    def do_POST(self) -> None:
        self._method_not_allowed()

    def do_PUT(self) -> None:
        self._method_not_allowed()

    def do_DELETE(self) -> None:
        self._method_not_allowed()

    def _method_not_allowed(self) -> None:
        self._send_json(
            HTTPStatus.METHOD_NOT_ALLOWED,
            error_body("only GET is supported"),
            extra_headers={"Allow": "GET"},
        )

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Answer protocol errors (bad request line, oversized headers) as JSON too."""
        self.request_version = self.protocol_version  # headers even if the line was garbage
        with contextlib.suppress(OSError):
            self._send_json(code, error_body(message or HTTPStatus(code).phrase))

    def _send_json(
        self,
        status: int,
        body: Mapping[str, object],
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        for name, value in (extra_headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def version_string(self) -> str:
        return self.server_version

    def address_string(self) -> str:
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:
        """Silence http.server's per-request access log; the provider logs events."""


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 16
    provider: ProviderServer


class ProviderServer:
    """The HTTP/1.1 server on one Unix socket path, answering from ``read_usage``.

    The socket is bound at its final name with mode 0666 (a client connecting
    before ``listen()`` is refused and retries at its next cycle). ``close()``
    removes it if it is still the one this server made.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        read_usage: ReadUsage,
        *,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.socket_path = os.fspath(socket_path)
        self._read_usage = read_usage
        self._request_timeout_s = request_timeout_s
        self._clock_ms = clock_ms
        # One reader at a time: a hung GCS call must not pile up threads.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-reader")
        self._last_status: int | None = None
        self._status_lock = threading.Lock()
        self._identity: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        self._httpd = _UnixHTTPServer(self.socket_path, _Handler, bind_and_activate=False)
        self._httpd.provider = self
        try:
            self._bind()
        except BaseException:
            self._httpd.server_close()
            _shutdown_now(self._executor)
            raise

    def _bind(self) -> None:
        # Bound at its final name, not bound elsewhere and renamed: usagestatsd refuses a
        # socket whose bound path (getpeername) is not the path it connected to, which is
        # how it tells a symlink swapped in by another user (docs/security.md).
        path = self.socket_path
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                os.unlink(path)  # a stale socket of a crashed provider, or something planted
        # bind() creates the node with 0777 & ~umask; 0o111 gives 0666 without a
        # chmod by path (which would follow a symlink swapped in meanwhile).
        old_umask = os.umask(0o111)
        try:
            self._httpd.socket.bind(path)
        finally:
            os.umask(old_umask)
        try:
            st = os.lstat(path)
            if not stat.S_ISSOCK(st.st_mode):
                raise OSError(errno.EEXIST, "the socket was replaced", path)
            self._httpd.socket.listen(self._httpd.request_queue_size)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        self._identity = (st.st_dev, st.st_ino)

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"provider-http {self.socket_path}",
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving and remove the socket file if it is still ours."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()
        _shutdown_now(self._executor)
        try:
            st = os.lstat(self.socket_path)
        except OSError:
            return
        if (st.st_dev, st.st_ino) == self._identity:
            with contextlib.suppress(OSError):
                os.unlink(self.socket_path)

    def __enter__(self) -> ProviderServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def answer_usage(self) -> tuple[int, dict[str, object]]:
        """Read the usage once, bounded in time; the status and body to answer."""
        try:
            future = self._executor.submit(self._read_usage)
            usage = future.result(timeout=self._request_timeout_s)
            if not isinstance(usage, Usage):
                raise UsageUnavailable(f"reader returned {type(usage).__name__}")
            status, body = HTTPStatus.OK, usage_body(usage, self._clock_ms())
        except FutureTimeoutError:
            reason = f"timed out after {self._request_timeout_s:g} s reading the cluster"
            status, body = HTTPStatus.SERVICE_UNAVAILABLE, error_body(reason)
        except RuntimeError as exc:  # executor shut down while closing
            status, body = HTTPStatus.SERVICE_UNAVAILABLE, error_body(str(exc)[:500])
        except Exception as exc:
            message = str(exc)[:500] or type(exc).__name__
            status, body = HTTPStatus.SERVICE_UNAVAILABLE, error_body(message)
        self._note_status(status, body)
        return status, body

    def _note_status(self, status: int, body: Mapping[str, object]) -> None:
        """Log only changes between serving and failing, not every request."""
        with self._status_lock:
            changed = status != self._last_status
            self._last_status = status
        if not changed:
            return
        if status == HTTPStatus.OK:
            log("usage.ok", socket=self.socket_path)
        else:
            log("usage.unavailable", socket=self.socket_path, error=body.get("error", ""))


# ---------------------------------------------------------------- finding the session


def find_session_dir(temp_root: str | os.PathLike[str]) -> str | None:
    """The current session directory under ``temp_root``, or None.

    ``session_latest`` must resolve to a ``session_*`` directory directly inside
    ``temp_root`` (the temp root is world-writable: anything else is ignored).
    """
    root = os.path.realpath(temp_root)
    link = os.path.join(root, "session_latest")
    try:
        target = os.readlink(link)
    except OSError:
        return None
    resolved = os.path.realpath(os.path.join(root, target))
    if os.path.dirname(resolved) != root:
        return None
    if not os.path.basename(resolved).startswith("session_"):
        return None
    try:
        st = os.lstat(resolved)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return None
    return resolved


def _trusted_owner(st: os.stat_result) -> bool:
    uid = os.geteuid()
    return uid == 0 or st.st_uid in (uid, 0)


def sockets_dir_of(session_dir: str) -> str:
    """``<session_dir>/sockets`` if it is a real directory owned by us or root."""
    path = os.path.join(session_dir, "sockets")
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, "not a directory", path)
    if not _trusted_owner(st):
        raise PermissionError(errno.EPERM, f"owned by uid {st.st_uid}, not by us or root", path)
    return path


def read_gcs_address(temp_root: str | os.PathLike[str]) -> str:
    """The GCS address ``host:port`` that ``ray start`` wrote to ``ray_current_cluster``."""
    path = os.path.join(temp_root, ADDRESS_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise UsageUnavailable(f"no running cluster ({path} is missing)") from None
    except OSError as exc:
        raise UsageUnavailable(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or not _trusted_owner(st):
            raise UsageUnavailable(f"{path} is not a regular file owned by us or root")
        text = f.read(256).decode("ascii", "replace").strip()
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or any(c.isspace() for c in text):
        raise UsageUnavailable(f"{path} does not hold host:port")
    return text


# ------------------------------------------------- Ray's GCS client, across versions
#
# What the client is called and what it takes changed often (measured on 2.2.0 to 2.60.0):
# `ray._private.gcs_utils.GcsClient` (Python, over gRPC) up to 2.4, where `ray._raylet` has
# none; `ray._raylet.GcsClient(address=...)` from 2.5 to 2.30, `NewGcsClient.standalone(...)`
# in 2.40, `InnerGcsClient.standalone(...)` from 2.44; the cluster id is `get_cluster_id()`
# (a hex string) before 2.20's `cluster_id` property, and absent before 2.9; job infos are
# dicts up to 2.6; node infos are dicts before 2.40 and protobuf messages after;
# `state_filter` exists only from 2.60.


def make_gcs_client(raylet: Any, address: str, timeout_s: float) -> Any:
    """A GCS client for `address` with whichever constructor this Ray version has."""
    for name in ("InnerGcsClient", "NewGcsClient"):
        standalone = getattr(getattr(raylet, name, None), "standalone", None)
        if standalone is not None:
            return standalone(address, None, int(timeout_s * 1000))
    client_class = getattr(raylet, "GcsClient", None)
    if client_class is None:  # up to Ray 2.4: the Python client of ray._private.gcs_utils
        client_class = importlib.import_module("ray._private.gcs_utils").GcsClient
    return client_class(address=address)


def cluster_id_of(client: Any) -> str | None:
    """The cluster id as hex, from the property or the older method; None if neither."""
    with contextlib.suppress(AttributeError):
        value = client.cluster_id
        return str(value.hex() if hasattr(value, "hex") else value)
    getter = getattr(client, "get_cluster_id", None)
    if getter is None:
        return None
    value = getter()
    return str(value.hex() if isinstance(value, bytes) else value)


def _accepted_names(fn: Callable[..., Any]) -> set[str] | None:
    """The keyword names `fn` declares, or None when it cannot say (or takes **kwargs)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def call_accepting(
    fn: Callable[..., Any], needed: Mapping[str, Any], optional: Mapping[str, Any]
) -> Any:
    """Call `fn` with `needed` and those of `optional` it accepts.

    The signature says which it accepts where Ray declares one; where it does not, the
    call is tried with them and again without on "unexpected keyword argument".
    """
    names = _accepted_names(fn)
    if names is not None:
        return fn(**needed, **{k: v for k, v in optional.items() if k in names})
    try:
        return fn(**needed, **optional)
    except TypeError as exc:
        if "keyword argument" not in str(exc):
            raise
        return fn(**needed)


def _node_state(info: Any) -> Any:
    """A node info's state: a dict entry before Ray 2.40, a message field after."""
    return info["state"] if isinstance(info, dict) else info.state


# --------------------------------------------------------------------- the GCS reader


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")[:MAX_VALUE_CHARS]


def check_session_name(name: bytes | None, session_dir: str) -> None:
    """Raise `UsageUnavailable` unless the GCS says it serves the session in `session_dir`.

    The address comes from ``ray_current_cluster``, which a head restarted on the same port
    leaves pointing at the new GCS while the old session is still followed. Every Ray since
    1.13 records ``session_name`` just after the cluster metadata: a GCS without it is one
    still starting, and its metadata may be a newer session's, so it is not taken either.
    """
    expected = os.path.basename(session_dir)
    if name is None:
        raise UsageUnavailable(f"the GCS has not recorded its session yet (expected {expected!r})")
    if name.decode("utf-8", "replace") != expected:
        raise UsageUnavailable(f"the GCS serves session {_decode(name)!r}, not {expected!r}")


class GcsUsageReader:
    """Reads the usage facts from Ray's GCS with Ray's own client, read-only.

    One client is kept per GCS address and dropped on any failure, so a
    restarted cluster (same address, new cluster id) is picked up.
    """

    def __init__(self, temp_root: str, *, gcs_timeout_s: float = DEFAULT_GCS_TIMEOUT_S) -> None:
        self.temp_root = temp_root
        self.gcs_timeout_s = gcs_timeout_s
        # Ray's client waits 5 s per connection attempt by default; keep it short.
        connect_s = str(max(1, round(gcs_timeout_s)))
        os.environ.setdefault("RAY_gcs_rpc_server_connect_timeout_s", connect_s)
        self._raylet: Any = importlib.import_module("ray._raylet")
        version = str(getattr(importlib.import_module("ray"), "__version__", ""))
        # Ray 2.0 and 2.1 also report the libraries recorded as files in the temp root.
        self._library_files = version.startswith(("2.0.", "2.1."))
        self._alive_state: Any = None
        with contextlib.suppress(Exception):
            gcs_pb2 = importlib.import_module("ray.core.generated.gcs_pb2")
            self._alive_state = gcs_pb2.GcsNodeInfo.GcsNodeState.ALIVE
        self._lock = threading.Lock()
        self._client: Any = None
        self._client_key: tuple[str, str | None] | None = None

    def _connect(self, key: tuple[str, str | None]) -> tuple[Any, bool]:
        """The client for (address, session); True when it was made just now."""
        address = key[0]
        with self._lock:
            if self._client is not None and self._client_key == key:
                return self._client, False
            self._client = None
            host, _, port = address.rpartition(":")
            # A cheap probe first: Ray's client blocks for many seconds on a dead port.
            try:
                with socket.create_connection((host.strip("[]"), int(port)), self.gcs_timeout_s):
                    pass
            except OSError as exc:
                raise UsageUnavailable(f"GCS at {address} is unreachable: {exc}") from None
            client = make_gcs_client(self._raylet, address, self.gcs_timeout_s)
            self._client, self._client_key = client, key
            log("gcs.connected", address=address, cluster_id=cluster_id_of(client))
            return client, True

    def _drop(self, client: Any) -> None:
        with self._lock:
            if self._client is client:
                self._client = None
                self._client_key = None

    def read(self, session_dir: str | None = None) -> Usage:
        """Read fresh facts; raise `UsageUnavailable` when the cluster cannot be read."""
        key = (read_gcs_address(self.temp_root), session_dir)
        for _attempt in range(2):
            try:
                client, fresh = self._connect(key)
            except UsageUnavailable:
                raise
            except Exception as exc:
                raise UsageUnavailable(_describe(exc)) from None
            try:
                return self._read_with(client, session_dir)
            except Exception as exc:
                self._drop(client)
                # A kept client may belong to a cluster that restarted on the same
                # address (Ray answers WrongClusterID): retry once with a new one.
                if fresh:
                    if isinstance(exc, UsageUnavailable):
                        raise
                    raise UsageUnavailable(_describe(exc)) from None
        raise UsageUnavailable("the GCS client failed twice")

    def _kv(self, method: Callable[..., Any], first: Any, namespace: bytes) -> Any:
        """One KV read; `timeout` only where the client takes one (not Ray 1.13's)."""
        call = functools.partial(method, first)
        return call_accepting(call, {"namespace": namespace}, {"timeout": self.gcs_timeout_s})

    def _keys(self, client: Any, prefix: bytes) -> list[bytes]:
        keys = self._kv(client.internal_kv_keys, prefix, USAGE_NAMESPACE)
        return sorted(keys)[:MAX_ITEMS]

    def _values(self, client: Any, keys: list[bytes]) -> dict[bytes, Any]:
        """Values of `keys`: one call where the client has multi_get (Ray 2.5+), else each."""
        if hasattr(client, "internal_kv_multi_get"):
            found = self._kv(client.internal_kv_multi_get, keys, USAGE_NAMESPACE)
            return dict(found)
        return {key: self._kv(client.internal_kv_get, key, USAGE_NAMESPACE) for key in keys}

    def _metadata(self, client: Any) -> dict[str, object] | None:
        """What `ray start` recorded about the cluster (a JSON object), or None."""
        try:
            raw = self._kv(client.internal_kv_get, CLUSTER_METADATA_KEY, CLUSTER_NAMESPACE)
            if raw is None or len(raw) > MAX_METADATA_BYTES:
                return None
            doc = json.loads(raw.decode("utf-8", "replace"))
        except Exception as exc:
            log("gcs.metadata_failed", error=_describe(exc))
            return None
        if not isinstance(doc, dict):
            return None
        return {str(k)[:64]: v for k, v in doc.items() if isinstance(v, (str, int, bool))}

    def _read_with(self, client: Any, session_dir: str | None) -> Usage:
        if session_dir is not None:
            name = self._kv(client.internal_kv_get, SESSION_NAME_KEY, SESSION_NAMESPACE)
            check_session_name(name, session_dir)
        libraries = [
            _decode(k[len(LIBRARY_USAGE_PREFIX) :])
            for k in self._keys(client, LIBRARY_USAGE_PREFIX)
        ]
        if self._library_files:
            libraries = sorted(set(libraries) | set(library_files(default_temp_root())))
        hardware = [
            _decode(k[len(HARDWARE_USAGE_PREFIX) :])
            for k in self._keys(client, HARDWARE_USAGE_PREFIX)
        ]
        tag_keys = self._keys(client, EXTRA_USAGE_TAG_PREFIX)
        tags: dict[str, str] = {}
        if tag_keys:
            values = self._values(client, tag_keys)
            for key in tag_keys:
                value = values.get(key)
                if value is not None:
                    tags[_decode(key[len(EXTRA_USAGE_TAG_PREFIX) :])] = _decode(value)
        return Usage(
            cluster_id=cluster_id_of(client),
            library_usages=libraries,
            extra_usage_tags=tags,
            hardware_usages=hardware,
            total_num_nodes=self._alive_nodes(client),
            total_num_running_jobs=self._running_jobs(client),
            cluster_metadata=self._metadata(client),
        )

    def _alive_nodes(self, client: Any) -> int | None:
        """ALIVE nodes, as Ray's reporter counts them; None if not readable."""
        if self._alive_state is None or not hasattr(client, "get_all_node_info"):
            return None  # Ray 1.13's client cannot list nodes: the dashboard's count stands
        try:
            # Ray 2.60 filters in the GCS; older clients take no state_filter (2.40 raises
            # TypeError on it) and return every node, dead ones included: count ALIVE here.
            nodes = call_accepting(
                client.get_all_node_info,
                {"timeout": self.gcs_timeout_s},
                {"state_filter": self._alive_state},
            )
            infos = _infos(nodes, "node_info_list")
            return sum(1 for info in infos if _node_state(info) == self._alive_state)
        except Exception as exc:
            log("gcs.nodes_failed", error=_describe(exc))
            return None

    def _running_jobs(self, client: Any) -> int | None:
        """Jobs not dead and outside ``_ray_internal*`` namespaces, as Ray counts them."""
        if not hasattr(client, "get_all_job_info"):
            return None  # Ray 1.13's client cannot list jobs: the dashboard's count stands
        try:
            # The skip_* arguments (Ray 2.40+) only save work; older clients lack them.
            jobs = call_accepting(
                client.get_all_job_info,
                {"timeout": self.gcs_timeout_s},
                {"skip_submission_job_info_field": True, "skip_is_running_tasks_field": True},
            )
            return sum(1 for job in _infos(jobs, "job_info_list") if counted_job(job))
        except Exception as exc:
            log("gcs.jobs_failed", error=_describe(exc))
            return None


def _infos(answer: Any, list_name: str) -> Any:
    """The infos of a listing: a dict's values (Ray 2.5+), or the gRPC reply's list (2.4-)."""
    return answer.values() if hasattr(answer, "values") else getattr(answer, list_name)


def counted_job(job: Any) -> bool:
    """Ray's rule for a running job; a job info is a dict up to Ray 2.6, a message after."""
    if isinstance(job, dict):
        dead, namespace = job.get("is_dead"), (job.get("config") or {}).get("ray_namespace")
    else:
        dead, namespace = job.is_dead, job.config.ray_namespace
    return not dead and not str(namespace or "").startswith(RAY_INTERNAL_NAMESPACE_PREFIX)


LIBRARY_FILE = re.compile(r"_ray_lib_usage-([0-9a-zA-Z_]+)\.txt")


def library_files(temp_root: str) -> list[str]:
    """Libraries Ray 2.0/2.1 record as `_ray_lib_usage-<name>.txt` in its default temp root
    whatever --temp-dir says (a process without a cluster, as `ray job submit`, cannot write
    the GCS), as its reporter reads them."""
    try:
        names = os.listdir(temp_root)
    except OSError:
        return []
    found = (LIBRARY_FILE.fullmatch(name) for name in names)
    return sorted(m.group(1) for m in found if m)[:MAX_ITEMS]


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:300]
    name = type(exc).__name__
    if "InvalidAuthToken" in text:
        text = "the cluster uses token authentication: give the provider RAY_AUTH_MODE=token"
        text += " and the token (RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN); see the protocol doc"
    return f"{name}: {text}" if text else name


# ---------------------------------------------------------------------- the main loop


class Provider:
    """Keeps one `ProviderServer` in the current session's sockets directory."""

    def __init__(
        self,
        temp_root: str,
        make_reader: Callable[[str], ReadUsage],
        *,
        poll_s: float = DEFAULT_POLL_S,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    ) -> None:
        self.temp_root = temp_root
        self._make_reader = make_reader
        self._poll_s = poll_s
        self._request_timeout_s = request_timeout_s
        self._stop = threading.Event()
        self._server: ProviderServer | None = None
        self._session: str | None = None
        self._waiting_logged = False
        self._failed_session: str | None = None

    def stop(self) -> None:
        """Ask `run` to return (safe from a signal handler)."""
        self._stop.set()

    def run(self, wait: Callable[[float], bool] | None = None) -> None:
        """Follow the current session until stopped, then clean up.

        ``wait(seconds)`` sleeps between checks and returns True to stop; the
        default waits on `stop`.
        """
        wait = wait or self._stop.wait
        log("started", temp_root=self.temp_root, pid=os.getpid())
        try:
            while not self._stop.is_set():
                self._follow()
                if wait(self._poll_s):
                    break
        finally:
            self._close_server()
            log("stopped")

    def _follow(self) -> None:
        session = find_session_dir(self.temp_root)
        if session is None:
            if not self._waiting_logged:
                log("session.none", temp_root=self.temp_root)
                self._waiting_logged = True
            return
        self._waiting_logged = False
        if session == self._session and self._server is not None:
            if not os.path.exists(self._server.socket_path):
                log("socket.missing", socket=self._server.socket_path)
                self._close_server()
            else:
                return
        try:
            sockets = sockets_dir_of(session)
            server = ProviderServer(
                os.path.join(sockets, SOCKET_NAME),
                self._make_reader(session),
                request_timeout_s=self._request_timeout_s,
            )
        except OSError as exc:
            if session != self._failed_session:  # retried every poll, logged once
                log("socket.failed", session=session, error=exc)
            self._failed_session = session
            return
        self._failed_session = None
        previous = self._server
        server.start()
        self._server, self._session = server, session
        log("session.found", session=session, socket=server.socket_path)
        if previous is not None:
            previous.close()
            log("socket.moved", old=previous.socket_path, new=server.socket_path)

    def _close_server(self) -> None:
        if self._server is not None:
            self._server.close()
            log("socket.removed", socket=self._server.socket_path)
            self._server = None
            self._session = None


STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


def wait_for_stop_signal(timeout_s: float) -> bool:
    """Sleep up to ``timeout_s``; True as soon as SIGTERM or SIGINT arrives.

    The signals are blocked (see `main`) and taken synchronously, so a stop is
    never delayed by a sleep and never interrupts a request half-way.
    """
    info = signal.sigtimedwait(STOP_SIGNALS, timeout_s)
    if info is None:
        return False
    log("signal", name=signal.Signals(info.si_signo).name)
    return True


def default_temp_root() -> str:
    """Ray's own rule: its temp root is $RAY_TMPDIR/ray, not $RAY_TMPDIR itself."""
    ray_tmpdir = os.environ.get("RAY_TMPDIR")
    return os.path.join(ray_tmpdir, "ray") if ray_tmpdir else "/tmp/ray"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        prog="usagestatsd-provider",
        description="Serve Ray GCS usage facts to usagestatsd over a Unix socket.",
    )
    default_root = default_temp_root()
    parser.add_argument(
        "--temp-root",
        default=default_root,
        help="Ray temp root (default $RAY_TMPDIR/ray, else /tmp/ray)",
    )
    parser.add_argument(
        "--gcs-timeout", type=float, default=DEFAULT_GCS_TIMEOUT_S, help="seconds per GCS call"
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=DEFAULT_POLL_S,
        help="seconds between checks of session_latest",
    )
    args = parser.parse_args(argv)
    if not 0 < args.gcs_timeout <= 30 or not 0 < args.poll_interval <= 60:
        parser.error("--gcs-timeout must be in (0, 30] and --poll-interval in (0, 60]")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the provider until SIGTERM or SIGINT; 0 on a clean stop."""
    args = parse_args(argv)
    temp_root = os.path.abspath(args.temp_root)
    # Block before Ray starts threads, so that every thread inherits the mask.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        reader = GcsUsageReader(temp_root, gcs_timeout_s=args.gcs_timeout)
    except ImportError as exc:
        log("ray.missing", python=sys.executable, error=exc)
        return 2

    def make_reader(session_dir: str) -> ReadUsage:
        return lambda: reader.read(session_dir)

    provider = Provider(
        temp_root,
        make_reader,
        poll_s=args.poll_interval,
        request_timeout_s=max(DEFAULT_REQUEST_TIMEOUT_S, 2 * args.gcs_timeout + 1),
    )
    provider.run(wait_for_stop_signal)
    return 0


if __name__ == "__main__":
    sys.exit(main())
