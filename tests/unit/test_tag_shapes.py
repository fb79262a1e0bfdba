"""Each of Ray's tags is held to the values Ray writes there; ray_version to Ray's forms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.test_report import recorded_report
from usagestatsd.contract.guard import guard
from usagestatsd.contract.identifiers import KnownIdentifiers
from usagestatsd.contract.ray_tags import _BY_SHAPE, RAY_TAG_KEYS, RAY_TAG_SHAPES
from usagestatsd.contract.report import ProviderFacts

DATA = Path(__file__).parents[1] / "data"
# This machine as the guard knows it: a host, a human user, and a system account.
KNOWN = KnownIdentifiers.of({"head-7"}, {"alice"}, {"/home/alice"}, {"jdoe", "postgres"})
# What a Ray job set with record_extra_usage_tag in a hostile review: all passed before.
HOSTILE = (
    "001a2b3c4d5e",
    "192,168,1,20",
    "192:168:1:20",
    "ab2001:db8::1",
    "2001-db8--1",
    "head.mycluster",
    "gpu-node-17",
    "my-project-123456",
    "8f9c2b1e-1234-4c5d-9e8f-0123456789ab",
    "jdoe",
    "postgres",
    "head-7",
)
# Values Ray itself writes (Ray's sources and telemetry tests), one or more per kind.
RAYS_OWN = {
    "num_normal_tasks": "20000000",
    "dashboard_used": "False",
    "core_state_api_list_actors": "1",
    "gcs_storage": "redis",
    "serve_api_version": "v2",
    "autoscaler_version": "v2",
    "air_entrypoint": "Tuner.fit",
    "air_trainer": "TorchTrainer",
    "tune_searcher": "BasicVariantGenerator",
    "tune_scheduler": "Custom",
    "rllib_algorithm": "PPO",
    "rllib_framework": "torch",
    "air_storage_configuration": "local+sync",
    "train_checkpoint_mode": "async",
    "air_env_vars": "RAY_AIR_NEW_OUTPUT,TUNE_DISABLE_AUTO_CALLBACK_LOGGERS",
    "air_callbacks": "WandbLoggerCallback,MLflowLoggerCallback",
    "llm_serve_models": "LlamaForCausalLM,MistralForCausalLM",
    "llm_serve_gpu_type": "A100-80G,L4",
    "llm_serve_num_gpus": "1,2",
    "llm_serve_serve_multiple_models": "1",
    "llm_batch_model_architecture": "OPTForCausalLM,",
    "llm_batch_processor_config_name": "vLLMEngineProcessorConfig,HttpRequestProcessorConfig",
    "llm_batch_accelerator_type": "A10G,",
    "llm_batch_size": "64,0",
    "llm_batch_task_type": "generate,",
}


def guarded_tags(tags: dict[str, str]) -> tuple[dict[str, str], set[str]]:
    """The tags a report keeps, and the fields the guard named."""
    report = recorded_report(provider=ProviderFacts(None, (), tags, ()), extra_tags={})
    clean, redactions = guard(report, KNOWN)
    return dict(clean.extra_usage_tags), {r.field for r in redactions}


def test_every_ray_tag_has_one_declared_shape() -> None:
    """The 115 names and their shapes are one declaration."""
    assert set(RAY_TAG_SHAPES) == RAY_TAG_KEYS and len(RAY_TAG_SHAPES) == 115


@pytest.mark.parametrize("version", sorted(p.name for p in DATA.glob("ray-*")))
def test_recorded_ray_tags_pass(version: str) -> None:
    """Every tag of every recorded Ray report is kept as Ray sent it."""
    body = json.loads((DATA / version / "report_payload.json").read_text())
    tags = body.get("usage_stats", body).get("extra_usage_tags") or {}  # none before Ray 2.0
    assert guarded_tags(tags) == (tags, set())


def test_rays_own_values_pass() -> None:
    """Values Ray writes under each kind of tag are kept."""
    assert guarded_tags(RAYS_OWN) == (RAYS_OWN, set())


@pytest.mark.parametrize("value", HOSTILE)
def test_values_a_job_sets_are_refused_under_every_ray_tag(value: str) -> None:
    """An address, a MAC, a host, project or account name, a UUID: refused whichever of
    Ray's 115 tags a job puts it under, each tag named, never the value."""
    kept, named = guarded_tags({key: value for key in sorted(RAY_TAG_KEYS)})
    assert kept == {}
    assert named == {f"extra_usage_tags.{key}" for key in RAY_TAG_KEYS}


def test_a_lone_word_is_refused_only_where_ray_writes_class_names_or_closed_words() -> None:
    """A given name that is no account here cannot be told from a word: it is refused where
    Ray writes class names (capitalised) or a closed set, and kept as a lower-case word."""
    kept, _ = guarded_tags({"air_trainer": "bob", "gcs_storage": "bob", "rllib_framework": "bob"})
    assert kept == {"rllib_framework": "bob"}


@pytest.mark.parametrize(
    ("version", "kept"),
    [
        ("2.60.0", True),
        ("2.60.0rc1", True),
        ("3.0.0.dev0", True),
        ("2.9.3", True),
        ("2.60.0+jdoe", False),
        ("2.60.0+local", False),
        ("2.60.0-head", False),
        ("2.60.0.dev0+g1234", False),
    ],
)
def test_ray_version_is_rays_own_form(version: str, kept: bool) -> None:
    """ray_version is digits and dots, with Ray's rc/dev forms only: no `+local` suffix."""
    clean, redactions = guard(recorded_report().with_fields(ray_version=version), KNOWN)
    assert (clean.ray_version == version) is kept
    assert [r.field for r in redactions] == ([] if kept else ["ray_version"])


def test_each_ray_tag_is_declared_once_under_one_shape() -> None:
    """The tag names are declared once, each under its shape: none twice, 115 in all."""
    declared = [name for _, names in _BY_SHAPE for name in names]
    assert len(declared) == len(set(declared)) == len(RAY_TAG_KEYS) == 115
