"""Attacks on the privacy guard itself: values built to make it slow, and tag values a Ray job
sets to carry an address or a name past it.

- A costly cluster config: any Ray job (or, where Ray's home is open, another user) writes
  up to 255 KiB of long dotted instance types; the guard used to spend minutes per cycle on them,
  on the event loop, so SIGTERM and the intake waited. Here uid `nobody` writes the file.
- A ~62 KB report to the collector with 1,023-character dotted library names (as nobody).
- Tag values a job sets with record_extra_usage_tag, served by the provider as Ray's GCS
  holds them (the job runs as Ray's user: the attacker's part is the provider's answer).
"""

from __future__ import annotations

import encodings.idna  # noqa: F401 -- looked up by urllib; nobody cannot import it later
import json
import pwd
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.collector.harness import CollectorProcess, running_collector, sample_report
from tests.faults.helpers import named, provider_doc, report_cycle, responses_with, the_session
from tests.faults.test_privacy_hostile_cluster import metadata_doc
from tests.support.hostile import as_user, needs_root, open_dir
from tests.support.poll import until
from tests.support.processes import daemon_env, running_daemon
from tests.support.servers import ScriptedEndpoint
from usagestatsd.config.settings import Settings
from usagestatsd.cycle.pipeline import collect_known_identifiers
from usagestatsd.demo import DemoCluster, make_session_dir

CONFIG_BYTES = 255 << 10
LONG_DOTTED = "a." * 495  # then a number: each instance type ~1,000 characters, distinct
# What a job set with record_extra_usage_tag in a hostile review (each passed the guard).
TAG_VALUES = {
    "air_trainer": "001a2b3c4d5e",
    "llm_serve_num_gpus": "192,168,1,20",
    "llm_serve_num_replicas": "192:168:1:20",
    "llm_serve_gpu_type": "ab2001:db8::1",
    "llm_batch_accelerator_type": "2001-db8--1",
    "air_storage_configuration": "head.mycluster",
    "rllib_framework": "gpu-node-17",
    "train_checkpoint_mode": "my-project-123456",
    "llm_serve_models": "8f9c2b1e-1234-4c5d-9e8f-0123456789ab",
}


def write_costly_config(path: Path, size_cap: int = CONFIG_BYTES) -> str:
    """As nobody: an autoscaler config of up to `size_cap` bytes (~255 KiB), every instance
    type a long dotted name."""
    lines = ["provider: {type: aws}", "head_node_type: n0", "available_node_types:"]
    size, index = 0, 0
    while True:
        line = f"  n{index}: {{node_config: {{InstanceType: {LONG_DOTTED}{index}}}}}"
        if size + len(line) + 1 > size_cap - 100:
            break
        lines.append(line)
        size += len(line) + 1
        index += 1
    path.write_text("\n".join(lines) + "\n")
    return f"written {path.stat().st_size}"


@needs_root
async def test_costly_cluster_config_never_stalls_a_cycle(
    endpoint: ScriptedEndpoint, temp_root: Path, state_dir: Path
) -> None:
    """nobody writes ~255 KiB of long dotted instance types into the cluster config: the
    reports keep coming, each name is refused for its length alone (no pattern runs on it),
    and SIGTERM mid-cycle ends the daemon at once."""
    config = open_dir() / "ray_bootstrap_config.yaml"
    # 96 KiB: ~95 names, still ~45 s of guard per cycle before, and a YAML parse that stays
    # well inside the parser's 3 s deadline on a busy machine (bench/guard.py: 255 KiB).
    assert as_user(lambda: write_costly_config(config, 96 << 10)).startswith("written 9")
    cluster = DemoCluster(make_session_dir(temp_root), responses_with())
    await cluster.start()
    env = daemon_env(temp_root, state_dir, endpoint.url, USAGESTATSD_CLUSTER_CONFIG=str(config))
    try:
        with running_daemon(env) as daemon:
            await until(lambda: len(endpoint.received) >= 3, timeout=60)
            assert daemon.stop() == 0  # SIGTERM while the next cycle runs: obeyed
    finally:
        await cluster.stop()
        shutil.rmtree(config.parent, ignore_errors=True)
    body = endpoint.bodies()[0]
    assert body["cloud_provider"] == "aws"
    assert body["head_node_instance_type"] is None and body["worker_node_instance_types"] == []
    redacted = [e for e in daemon.events() if e["event"] == "privacy.redacted"]
    reasons = {(e["field"], e["reason"]) for e in redacted}
    assert reasons == {
        ("head_node_instance_type", "longer than 64 characters"),
        ("worker_node_instance_types", "longer than 64 characters"),
    }
    # One line per field and reason each cycle, however many values it held.
    assert len(redacted) <= 2 * len(endpoint.received)


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[CollectorProcess]:
    """A real collector on 127.0.0.1, storing in SQLite, taking reports of up to 64 KiB
    (its default, 16 KiB, would refuse the costly report before the guard sees it)."""
    config = tmp_path / "collector.toml"
    config.write_text(f"max_report_bytes = {64 << 10}\n")
    with running_collector(tmp_path / "state", config=config) as running:
        yield running


def post_as_nobody(url: str, body: bytes) -> Callable[[], str]:
    """The attacker's part: POST `body` to the collector, as whoever runs it."""

    def post() -> str:
        request = urllib.request.Request(
            url, data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return str(response.status)
        except urllib.error.HTTPError as exc:
            return str(exc.code)

    return post


@needs_root
def test_collector_long_dotted_library_names(collector: CollectorProcess) -> None:
    """nobody sends one valid ~62 KB report whose library names are 1,023-character dotted
    strings: stored without them, each refused for its length alone."""
    names = [("a." * 511)[: 1023 - 3] + f"{i:03d}" for i in range(60)]
    report = sample_report("cd" * 16, 0, library_usages=names)
    body = json.dumps(report).encode()
    assert 60_000 < len(body) < 64 << 10
    assert as_user(post_as_nobody(collector.url, body)) == "200"
    stored = collector.get(f"/api/sessions/{'cd' * 16}").json()["reports"][0]["report"]
    assert stored["library_usages"] == []
    [event] = collector.events("ingest.redacted", at_least=1)
    assert event["fields"] == ["library_usages"]
    assert event["reasons"] == ["longer than 64 characters"]


def a_system_account() -> str:
    """A local account that is no human user (uid under 1000), as every machine has."""
    return next(e.pw_name for e in pwd.getpwall() if 0 < e.pw_uid < 1000 and e.pw_name.isalpha())


async def test_tag_values_a_job_sets_never_reach_the_endpoint(
    make_settings: Callable[..., Settings], endpoint: ScriptedEndpoint, temp_root: Path
) -> None:
    """Addresses, a MAC, host and project names, a UUID and a local account name set as
    Ray's tags, and a `+suffix` on ray_version: none is sent, each tag is named; Ray's own
    tags are kept."""
    account = a_system_account()
    tags = {**TAG_VALUES, "llm_batch_task_type": account, "gcs_storage": "memory"}
    report_head = dict(responses_with()["dash_ReportHead"])
    report_head["/api/v0/cluster_metadata"] = metadata_doc(
        {
            "ray_version": f"2.60.0+{account}",
            "python_version": "3.11.2",
            "git_commit": "b7f4259e944bf6959f721b106adc366ddfa0c356",
            "os": "linux",
            "libc_version": "glibc:2.36",
        }
    )
    served = {"/v1/usage": provider_doc(tags=tags)}
    responses = responses_with({"dash_ReportHead": report_head, "usagestatsd_provider": served})
    cluster = DemoCluster(make_session_dir(temp_root), responses)
    await cluster.start()
    try:
        settings = make_settings({"RAY_USAGE_STATS_REPORT_URL": endpoint.url})
        with capture_logs() as events:
            await report_cycle(settings, collect_known_identifiers()).run(the_session(temp_root))
    finally:
        await cluster.stop()
    [(_, raw, _)] = endpoint.received
    report = json.loads(raw)
    assert report["extra_usage_tags"] == {"gcs_storage": "memory"}
    assert report["ray_version"] is None
    for value in [*TAG_VALUES.values(), f"+{account}"]:
        assert value.encode() not in raw
    fields = {str(e["field"]) for e in named(events, "privacy.redacted")}
    assert {f"extra_usage_tags.{key}" for key in tags if key != "gcs_storage"} <= fields
    assert "ray_version" in fields
