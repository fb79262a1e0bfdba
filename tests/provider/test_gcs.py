"""The provider's GCS calls across Ray versions, against stand-ins shaped like each client.

The real clients are exercised on every version by `make test-ray-matrix`; these pin the
shapes measured there (tests/data/ray-*/provider_log.txt) so `make test` covers them.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from usagestatsd.facts.fetch import Limits, fetch_unix_json
from usagestatsd.facts.sources import parse_provider
from usagestatsd.provider import (
    SOCKET_NAME,
    ProviderServer,
    Usage,
    UsageUnavailable,
    call_accepting,
    check_session_name,
    cluster_id_of,
    counted_job,
    library_files,
    make_gcs_client,
)

ALIVE, DEAD = 0, 1


class Client240:
    """Ray 2.40's NewGcsClient: no state_filter, message-like node infos."""

    cluster_id = SimpleNamespace(hex=lambda: "ab" * 28)

    def get_all_node_info(self, timeout: float | None = None) -> dict[bytes, Any]:
        return {b"a": SimpleNamespace(state=ALIVE), b"b": SimpleNamespace(state=DEAD)}


class Client293:
    """Ray 2.9's GcsClient: get_cluster_id() as text, dict node infos, no signature."""

    def get_cluster_id(self) -> str:
        return "cd" * 28

    def get_all_job_info(self, **kwargs: Any) -> dict[bytes, Any]:
        unknown = set(kwargs) - {"timeout"}
        if unknown:
            raise TypeError(f"get_all_job_info() got an unexpected keyword argument {unknown}")
        return {b"j": "job"}


def test_optional_arguments_are_passed_only_where_accepted() -> None:
    """2.40 declares no state_filter: it is left out instead of failing the call."""
    nodes = call_accepting(Client240().get_all_node_info, {"timeout": 1.0}, {"state_filter": ALIVE})
    assert len(nodes) == 2  # unfiltered: the caller counts ALIVE itself


def test_without_a_signature_the_call_is_retried_plainly() -> None:
    """A client that takes **kwargs and rejects the unknown ones: retried without them."""
    jobs = call_accepting(
        Client293().get_all_job_info,
        {"timeout": 1.0},
        {"skip_submission_job_info_field": True},
    )
    assert jobs == {b"j": "job"}


def test_other_type_errors_are_not_swallowed() -> None:
    """Only "unexpected keyword argument" means an older signature."""

    def broken(**kwargs: Any) -> None:
        raise TypeError("NoneType is not iterable")

    with pytest.raises(TypeError, match="iterable"):
        call_accepting(broken, {}, {"x": 1})


def test_the_cluster_id_of_each_client_shape() -> None:
    """Property with .hex() (2.20+) or get_cluster_id() text (2.9); None if neither."""
    assert cluster_id_of(Client240()) == "ab" * 28
    assert cluster_id_of(Client293()) == "cd" * 28
    assert cluster_id_of(object()) is None


def test_the_client_constructor_of_each_version() -> None:
    """InnerGcsClient (2.44+) before NewGcsClient (2.40) before GcsClient(address=)."""
    made: list[tuple[str, tuple[Any, ...]]] = []

    def maker(name: str) -> Any:
        def standalone(*args: Any) -> str:
            made.append((name, args))
            return name

        return SimpleNamespace(standalone=standalone)

    old = SimpleNamespace(GcsClient=lambda address: ("GcsClient", address))
    assert make_gcs_client(old, "h:1", 2.0) == ("GcsClient", "h:1")
    v240 = SimpleNamespace(NewGcsClient=maker("New"), GcsClient=None)
    assert make_gcs_client(v240, "h:1", 2.0) == "New"
    v260 = SimpleNamespace(InnerGcsClient=maker("Inner"), NewGcsClient=maker("New"))
    assert make_gcs_client(v260, "h:1", 2.0) == "Inner"
    assert made[-1] == ("Inner", ("h:1", None, 2000))


def test_jobs_as_dicts_and_as_messages_are_counted_alike() -> None:
    """Ray 2.5/2.6 give dicts (attribute access failed there), 2.8+ protobuf messages."""

    def as_dict(dead: bool, namespace: str) -> dict[str, Any]:
        return {"is_dead": dead, "config": {"ray_namespace": namespace}}

    def as_message(dead: bool, namespace: str) -> Any:
        return SimpleNamespace(is_dead=dead, config=SimpleNamespace(ray_namespace=namespace))

    for shape in (as_dict, as_message):
        jobs = [shape(False, "x"), shape(True, "x"), shape(False, "_ray_internal_dashboard")]
        assert [counted_job(j) for j in jobs] == [True, False, False]


def test_ray_up_to_2_4_uses_the_python_gcs_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """`ray._raylet` of 2.3/2.4 has no GcsClient: gcs_utils' Python client is used."""
    gcs_utils = ModuleType("ray._private.gcs_utils")
    gcs_utils.GcsClient = lambda address: ("gcs_utils.GcsClient", address)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ray._private.gcs_utils", gcs_utils)
    assert make_gcs_client(SimpleNamespace(), "h:1", 2.0) == ("gcs_utils.GcsClient", "h:1")


async def test_the_daemon_accepts_the_providers_socket() -> None:
    """The provider binds at its final name, so the daemon's peer check (bound path =
    connected path) accepts it; bound elsewhere and renamed, it was refused."""
    path = Path(tempfile.mkdtemp(prefix="usdg-", dir="/tmp")) / SOCKET_NAME
    try:
        with ProviderServer(path, lambda: Usage(cluster_id="ab" * 28)):
            doc = await fetch_unix_json(path, "/v1/usage", "provider", Limits())
        assert parse_provider(doc).cluster_id == "ab" * 28
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


def test_ray_2_0_library_files_are_read(tmp_path: Path) -> None:
    """Ray 2.0/2.1 also report `_ray_lib_usage-<name>.txt` files; nothing else is taken."""
    for name in ("_ray_lib_usage-job_submission.txt", "_ray_lib_usage-tune.txt", "other.txt"):
        (tmp_path / name).touch()
    (tmp_path / "_ray_lib_usage-bad name.txt").touch()
    assert library_files(str(tmp_path)) == ["job_submission", "tune"]
    assert library_files(str(tmp_path / "absent")) == []


def test_only_the_gcs_of_the_followed_session_is_read() -> None:
    """A head restarted on the same GCS port: the old session's reader must not take the new
    GCS's facts, neither once it names its session nor while it has not named one yet (it
    has written its cluster metadata by then, with the new session's id and start time)."""
    session_dir = "/tmp/ray/session_2026-12-03_17-00-00_000001_100"
    check_session_name(b"session_2026-12-03_17-00-00_000001_100", session_dir)
    with pytest.raises(UsageUnavailable, match="serves session 'session_2026-12-03_18"):
        check_session_name(b"session_2026-12-03_18-00-00_000002_200", session_dir)
    with pytest.raises(UsageUnavailable, match="has not recorded its session yet"):
        check_session_name(None, session_dir)
