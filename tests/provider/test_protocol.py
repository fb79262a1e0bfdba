"""The provider's HTTP layer on a real Unix socket, with the GCS reader replaced (no Ray)."""

from __future__ import annotations

import ast
import http.client
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.poll import wait_until
from usagestatsd.provider import (
    PROTOCOL_VERSION,
    SOCKET_NAME,
    Provider,
    ProviderServer,
    ReadUsage,
    Usage,
    UsageUnavailable,
    find_session_dir,
)

PROVIDER_PY = Path(__file__).parents[2] / "usagestatsd" / "provider.py"
FIXED_MS = 1_795_823_481_178
SAMPLE = Usage(
    cluster_id="1c4945d0f5bd56675908afac3a1bf236b34c2c2f2643f2e43079b661",
    library_usages=["core", "job_submission"],
    extra_usage_tags={"gcs_storage": "memory", "num_drivers": "1"},
    hardware_usages=["AMD EPYC"],
    total_num_nodes=1,
    total_num_running_jobs=2,
)


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix stream socket."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def listening(path: Path) -> bool:
    """Whether the socket takes connections: it is bound (and so exists) a moment before
    it listens, and a client connecting in between is refused (ProviderServer)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def request(path: str, method: str = "GET", url: str = "/v1/usage") -> tuple[int, Any, str]:
    """One request; the status, the decoded JSON body and the Content-Type."""
    conn = UnixHTTPConnection(path)
    try:
        conn.request(method, url)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw), resp.getheader("Content-Type") or ""
    finally:
        conn.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory short enough for Unix socket paths (108 bytes at most)."""
    path = Path(tempfile.mkdtemp(prefix="usdp-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def serve(short_dir: Path) -> Iterator[Callable[..., ProviderServer]]:
    """Start a ProviderServer on a socket in ``short_dir``; closed after the test."""
    servers: list[ProviderServer] = []

    def start(read_usage: ReadUsage, **kwargs: Any) -> ProviderServer:
        kwargs.setdefault("clock_ms", lambda: FIXED_MS)
        server = ProviderServer(short_dir / SOCKET_NAME, read_usage, **kwargs)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def test_usage_200_has_the_documented_shape(serve: Callable[..., ProviderServer]) -> None:
    """GET /v1/usage answers 200 JSON with every protocol field and its type."""
    server = serve(lambda: SAMPLE)
    status, body, ctype = request(server.socket_path)
    assert status == 200
    assert ctype == "application/json"
    assert body == {
        "protocol_version": PROTOCOL_VERSION,
        "cluster_id": SAMPLE.cluster_id,
        "library_usages": ["core", "job_submission"],
        "extra_usage_tags": {"gcs_storage": "memory", "num_drivers": "1"},
        "hardware_usages": ["AMD EPYC"],
        "total_num_nodes": 1,
        "total_num_running_jobs": 2,
        "cluster_metadata": None,
        "collected_at_ms": FIXED_MS,
    }
    assert body["protocol_version"] == 1


def test_unknown_values_are_null_or_empty(serve: Callable[..., ProviderServer]) -> None:
    """A reader that knows nothing gives null ids and counts, empty lists and tags."""
    server = serve(lambda: Usage(cluster_id=None))
    status, body, _ = request(server.socket_path)
    assert status == 200
    assert body["cluster_id"] is None
    assert body["library_usages"] == [] and body["hardware_usages"] == []
    assert body["extra_usage_tags"] == {}
    assert body["total_num_nodes"] is None and body["total_num_running_jobs"] is None


def test_each_request_reads_afresh(serve: Callable[..., ProviderServer]) -> None:
    """The reader is called once per request, so values are never stale."""
    calls: list[int] = []

    def reader() -> Usage:
        calls.append(1)
        return Usage(cluster_id=None, extra_usage_tags={"n": str(len(calls))})

    server = serve(reader)
    assert request(server.socket_path)[1]["extra_usage_tags"] == {"n": "1"}
    assert request(server.socket_path)[1]["extra_usage_tags"] == {"n": "2"}


@pytest.mark.parametrize(
    "error", [UsageUnavailable("no running cluster"), RuntimeError("GCS said no")]
)
def test_503_when_the_reader_raises(serve: Callable[..., ProviderServer], error: Exception) -> None:
    """A failing reader gives 503 with protocol_version and the error text."""

    def reader() -> Usage:
        raise error

    server = serve(reader)
    status, body, ctype = request(server.socket_path)
    assert status == 503
    assert ctype == "application/json"
    assert body == {"protocol_version": PROTOCOL_VERSION, "error": str(error)}


def test_503_when_the_reader_is_too_slow(serve: Callable[..., ProviderServer]) -> None:
    """A reader slower than the request timeout gives 503 instead of hanging the client."""
    release = threading.Event()

    def reader() -> Usage:
        release.wait(5)
        return SAMPLE

    server = serve(reader, request_timeout_s=0.2)
    try:
        status, body, _ = request(server.socket_path)
    finally:
        release.set()
    assert status == 503
    assert "timed out" in body["error"]


def test_unknown_path_is_404(serve: Callable[..., ProviderServer]) -> None:
    """Any other path answers 404 JSON and does not call the reader."""
    calls: list[int] = []

    def reader() -> Usage:
        calls.append(1)
        return SAMPLE

    server = serve(reader)
    status, body, ctype = request(server.socket_path, url="/v2/usage")
    assert status == 404
    assert ctype == "application/json"
    assert body["protocol_version"] == PROTOCOL_VERSION
    assert "error" in body
    assert calls == []


def test_query_string_is_ignored(serve: Callable[..., ProviderServer]) -> None:
    """/v1/usage?anything is still the usage resource."""
    server = serve(lambda: SAMPLE)
    assert request(server.socket_path, url="/v1/usage?x=1")[0] == 200


def test_other_methods_are_405(serve: Callable[..., ProviderServer]) -> None:
    """POST is refused with 405 and a JSON error: the provider is read-only."""
    server = serve(lambda: SAMPLE)
    status, body, _ = request(server.socket_path, method="POST")
    assert status == 405
    assert body["protocol_version"] == PROTOCOL_VERSION


def test_garbage_request_gets_a_json_400(serve: Callable[..., ProviderServer]) -> None:
    """A malformed request line is answered 400 with a JSON body, then closed."""
    server = serve(lambda: SAMPLE)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(server.socket_path)
        sock.sendall(b"NOT A REQUEST\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert json.loads(body)["protocol_version"] == PROTOCOL_VERSION


def test_socket_is_world_connectable_and_removed_on_close(short_dir: Path) -> None:
    """The socket has mode 0666, no temporary name is left, and close() removes it."""
    server = ProviderServer(short_dir / SOCKET_NAME, lambda: SAMPLE)
    server.start()
    try:
        st = os.lstat(server.socket_path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o666
        assert sorted(os.listdir(short_dir)) == [SOCKET_NAME]
    finally:
        server.close()
    assert os.listdir(short_dir) == []


def test_a_stale_socket_is_replaced(short_dir: Path) -> None:
    """A socket file left by a crashed provider is replaced, and usagestatsd's peer check
    (bound path = connected path) accepts the new one."""
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(short_dir / SOCKET_NAME))
    stale.close()
    with ProviderServer(short_dir / SOCKET_NAME, lambda: SAMPLE) as server:
        assert request(server.socket_path)[0] == 200
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(server.socket_path)
            assert sock.getpeername() == server.socket_path


def test_close_leaves_a_socket_that_is_not_ours(short_dir: Path) -> None:
    """If another process replaced our socket, close() does not delete theirs."""
    server = ProviderServer(short_dir / SOCKET_NAME, lambda: SAMPLE)
    server.start()
    os.unlink(server.socket_path)
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(server.socket_path)
    try:
        server.close()
        assert os.path.exists(server.socket_path)
    finally:
        other.close()


def make_session(root: Path, name: str) -> Path:
    """A ``session_*`` directory with a ``sockets`` subdirectory under ``root``."""
    session = root / name
    (session / "sockets").mkdir(parents=True)
    return session


def point_latest(root: Path, session: Path) -> None:
    """Atomically point ``session_latest`` at ``session``, as ``ray start`` does."""
    tmp = root / "session_latest.tmp"
    tmp.symlink_to(session)
    tmp.replace(root / "session_latest")


def test_find_session_dir_accepts_only_sessions_inside_the_root(short_dir: Path) -> None:
    """session_latest must resolve to a session_* directory directly inside the temp root."""
    root = short_dir / "ray"
    root.mkdir()
    assert find_session_dir(root) is None
    session = make_session(root, "session_1")
    point_latest(root, session)
    assert find_session_dir(root) == str(session)
    outside = make_session(short_dir, "session_elsewhere")
    point_latest(root, outside)
    assert find_session_dir(root) is None
    point_latest(root, make_session(root, "not_a_session"))
    assert find_session_dir(root) is None


def test_provider_follows_a_cluster_restart(short_dir: Path) -> None:
    """A new session_latest moves the socket into the new session and removes the old one."""
    root = short_dir / "ray"
    root.mkdir()
    first = make_session(root, "session_1")
    point_latest(root, first)

    def make_reader(session_dir: str) -> ReadUsage:
        return lambda: Usage(cluster_id=None, extra_usage_tags={"session": session_dir})

    provider = Provider(str(root), make_reader, poll_s=0.05)
    thread = threading.Thread(target=provider.run)
    thread.start()
    try:
        first_sock = first / "sockets" / SOCKET_NAME
        wait_until(lambda: listening(first_sock))
        assert request(str(first_sock))[1]["extra_usage_tags"] == {"session": str(first)}

        second = make_session(root, "session_2")
        point_latest(root, second)
        second_sock = second / "sockets" / SOCKET_NAME
        wait_until(lambda: listening(second_sock) and not first_sock.exists())
        assert request(str(second_sock))[1]["extra_usage_tags"] == {"session": str(second)}
    finally:
        provider.stop()
        thread.join(timeout=5)
    assert not thread.is_alive()
    assert not (second / "sockets" / SOCKET_NAME).exists()


def test_the_script_looks_under_ray_tmpdir_slash_ray(short_dir: Path) -> None:
    """Run as Ray runs it, RAY_TMPDIR=/x makes the provider look in /x/ray, as Ray does."""
    root = short_dir / "ray"
    root.mkdir()
    session = make_session(root, "session_1")
    point_latest(root, session)
    # Ray's client is needed only once a request comes; an empty module stands in for it.
    stub = short_dir / "stub" / "ray"
    stub.mkdir(parents=True)
    (stub / "_raylet.py").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "USAGESTATSD_"))}
    env.update(RAY_TMPDIR=str(short_dir), PYTHONPATH=str(stub.parent))
    proc = subprocess.Popen(
        [sys.executable, str(PROVIDER_PY), "--poll-interval", "0.05"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: (session / "sockets" / SOCKET_NAME).exists() or proc.poll() is not None)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
    assert f"provider.started temp_root={root} " in stderr, stderr
    assert f"provider.session.found session={session} " in stderr, stderr
    assert proc.returncode == 0, stderr


def test_provider_imports_only_the_standard_library() -> None:
    """provider.py runs under Ray's Python, where usagestatsd and its libraries are absent:
    every module it imports (at any depth in the file) is in the standard library."""
    tree = ast.parse(PROVIDER_PY.read_text(), str(PROVIDER_PY))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module, f"relative import at line {node.lineno}"
            imported.add(node.module.split(".")[0])
    assert {"os", "socket", "argparse"} <= imported  # the walk did see the imports
    assert imported - sys.stdlib_module_names == set()


def test_a_copy_of_provider_py_runs_on_its_own(short_dir: Path) -> None:
    """Installed as /usr/lib/usagestatsd/provider.py and run with `python -I`: a lone copy
    starts (here: prints its help) without usagestatsd on the path."""
    copy = short_dir / "provider.py"
    shutil.copyfile(PROVIDER_PY, copy)
    result = subprocess.run(
        [sys.executable, "-I", str(copy), "--help"],
        cwd=short_dir,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "--temp-root" in result.stdout
