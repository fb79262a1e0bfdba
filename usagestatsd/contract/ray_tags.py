"""The names of Ray's own usage tags (the only tag names taken from the provider socket), and
the values each may carry: each name is declared once, under its shape (`_BY_SHAPE`).

Ray records a usage tag under `extra_usage_tag_<name>` in the GCS, where <name> is a
`TagKey` enum name lower-cased (ray/_private/usage/usage_lib.py, record_extra_usage_tag).
This is the union of `ray.core.generated.usage_pb2.TagKey` over Ray 2.9.3, 2.20.0, 2.30.0,
2.40.0, 2.44.1, 2.47.1 and 2.60.0 (the cached venvs under
/var/cache/usagestatsd-ray/<version>/venv), read with `TagKey.keys()`: 115 names. A newer
Ray's new tags are dropped until they are added here.
Operators' own tags (RAY_USAGE_STATS_EXTRA_TAGS) are not limited to these names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# ---------------------------------------------------------------------------
# What each tag's value looks like. A Ray job can set any of these tags to any string
# (record_extra_usage_tag), so a tag is held to the values Ray itself writes there, read
# from Ray's sources (usage_lib's callers, Ray Train/Tune/Serve/Data/LLM telemetry):
# counts, flags, a closed set of Ray's own words, or (for class, model and accelerator names)
# a narrow token shape that the guard's detectors and this machine's names still check.


@dataclass(frozen=True)
class TagShape:
    """The values one of Ray's tags may carry."""

    pattern: re.Pattern[str]  # matched with fullmatch against the whole value
    max_chars: int  # longer values are refused before any pattern runs
    # Every value the pattern admits is Ray's own word or a number: nothing to detect.
    closed: bool = False
    refused: str | None = None  # the tag is never sent, and why


def _words(*words: str) -> TagShape:
    return TagShape(re.compile("|".join(re.escape(w) for w in words)), max(map(len, words)), True)


def _listed(item: str, item_chars: int) -> TagShape:
    """A comma-separated list as Ray's LLM telemetry writes it (one item per model, an
    item may be empty): at most 64 items."""
    pattern = re.compile(rf"(?:{item})?(?:,(?:{item})?){{0,63}}")
    return TagShape(pattern, 64 * (item_chars + 1))


_CLASS_NAME = r"[A-Z][A-Za-z0-9_]{0,63}"  # TorchTrainer, PPO, Custom
_NAME = r"[A-Za-z][A-Za-z0-9_]{0,63}"  # LlamaForCausalLM, vLLMEngineProcessorConfig
_WORD = r"[a-z][a-z0-9_+]{0,31}"  # torch, local+sync, chat
# Ray's accelerator type names: A10G, L4, A100-80G, NVIDIA_TESLA_V100, Intel-GPU-Max-1550.
_ACCELERATOR = r"[A-Z0-9][A-Za-z0-9_]{0,31}(?:-[A-Za-z0-9_]{1,15}){0,3}"

COUNT = TagShape(re.compile(r"[0-9]{1,15}"), 15, closed=True)
# "1" from most *_used tags, True/False from the dashboard's; a count is never an identifier.
FLAG = TagShape(re.compile(r"[0-9]{1,15}|[Tt]rue|[Ff]alse"), 15, closed=True)
COUNTS = _listed(r"[0-9]{1,9}", 9)
CLASS = TagShape(re.compile(_CLASS_NAME), 64)
CLASSES = _listed(_CLASS_NAME, 64)
NAMES = _listed(_NAME, 64)
ACCELERATORS = _listed(_ACCELERATOR, 80)
WORD = TagShape(re.compile(_WORD), 32)
WORDS = _listed(_WORD, 32)
ENV_NAMES = _listed(r"[A-Z][A-Z0-9_]{0,63}", 64)
JSON_DOCUMENT = TagShape(re.compile(r"(?!)"), 0, refused="free-form JSON, never sent")

_BY_SHAPE: tuple[tuple[TagShape, tuple[str, ...]], ...] = (
    (
        COUNT,
        (
            "actor_num_created",
            "num_actor_creation_tasks",
            "num_actor_tasks",
            "num_drivers",
            "num_normal_tasks",
            "pg_num_created",
            "rllib_num_workers",
            "serve_num_apps",
            "serve_num_deployments",
            "serve_num_gpu_deployments",
            "serve_num_node_compactions",
            "serve_num_replicas_lightweight_updated",
            "serve_num_replicas_using_asynchronous_inference",
            "serve_num_replicas_via_api_call_updated",
            "worker_crash_oom",
            "worker_crash_system_error",
        ),
    ),
    (
        FLAG,
        (
            "air_setup_mlflow_integration_used",
            "air_setup_wandb_integration_used",
            "core_state_api_get_log",
            "core_state_api_list_actors",
            "core_state_api_list_cluster_events",
            "core_state_api_list_jobs",
            "core_state_api_list_logs",
            "core_state_api_list_nodes",
            "core_state_api_list_objects",
            "core_state_api_list_placement_groups",
            "core_state_api_list_runtime_envs",
            "core_state_api_list_tasks",
            "core_state_api_list_workers",
            "core_state_api_summarize_actors",
            "core_state_api_summarize_objects",
            "core_state_api_summarize_tasks",
            "dashboard_metrics_grafana_enabled",
            "dashboard_metrics_prometheus_enabled",
            "dashboard_used",
            "experimental_state_api_import",
            "llm_serve_direct_streaming_enabled",
            "llm_serve_serve_multiple_apps",
            "llm_serve_serve_multiple_models",
            "ray_get_timeout_zero",
            "serve_app_container_runtime_env_used",
            "serve_auto_num_replicas_used",
            "serve_autoscaling_config_lightweight_updated",
            "serve_custom_autoscaling_policy_used",
            "serve_custom_request_router_used",
            "serve_dag_driver_used",
            "serve_deployment_container_runtime_env_used",
            "serve_deployment_handle_api_used",
            "serve_deployment_handle_to_object_ref_api_used",
            "serve_fastapi_used",
            "serve_get_app_handle_api_used",
            "serve_get_deployment_handle_api_used",
            "serve_grpc_ingress_used",
            "serve_grpc_proxy_used",
            "serve_http_adapter_used",
            "serve_http_proxy_used",
            "serve_multiplexed_api_used",
            "serve_ray_serve_handle_api_used",
            "serve_ray_serve_sync_handle_api_used",
            "serve_status_api_used",
            "serve_user_config_lightweight_updated",
            "train_asynchronous_validation",
            "train_elasticity_enabled",
            "train_lightning_prepare_trainer",
            "train_lightning_rayddpstrategy",
            "train_lightning_raydeepspeedstrategy",
            "train_lightning_rayfsdpstrategy",
            "train_lightning_raylightningenvironment",
            "train_lightning_raytrainreportcallback",
            "train_torch_get_device",
            "train_torch_get_devices",
            "train_torch_prepare_dataloader",
            "train_torch_prepare_model",
            "train_transformers_prepare_trainer",
            "train_transformers_raytrainreportcallback",
        ),
    ),
    (
        COUNTS,
        (
            "llm_batch_concurrency",
            "llm_batch_data_parallel_size",
            "llm_batch_pipeline_parallel_size",
            "llm_batch_size",
            "llm_batch_tensor_parallel_size",
            "llm_serve_autoscaling_max_replicas",
            "llm_serve_autoscaling_min_replicas",
            "llm_serve_initial_num_lora_adapters",
            "llm_serve_json_mode_num_replicas",
            "llm_serve_num_gpus",
            "llm_serve_num_replicas",
            "llm_serve_tensor_parallel_degree",
        ),
    ),
    (
        CLASS,
        (
            "air_trainer",
            "rllib_algorithm",
            "train_trainer",
            "tune_scheduler",
            "tune_searcher",
        ),
    ),
    (
        CLASSES,
        ("air_callbacks",),
    ),
    (
        NAMES,
        (
            "llm_batch_model_architecture",
            "llm_batch_processor_config_name",
            "llm_serve_autoscaling_enabled_models",
            "llm_serve_json_mode_models",
            "llm_serve_lora_base_models",
            "llm_serve_models",
        ),
    ),
    (
        ACCELERATORS,
        (
            "llm_batch_accelerator_type",
            "llm_serve_gpu_type",
        ),
    ),
    (
        WORD,
        (
            "_test1",
            "_test2",
            "air_storage_configuration",
            "rllib_framework",
            "train_checkpoint_mode",
        ),
    ),
    (
        WORDS,
        ("llm_batch_task_type",),
    ),
    (
        ENV_NAMES,
        ("air_env_vars",),
    ),
    (
        JSON_DOCUMENT,
        (
            "data_logical_ops",
            "data_usage",
        ),
    ),
    (_words("memory", "redis"), ("gcs_storage",)),
    (_words("v1", "v2"), ("autoscaler_version", "serve_api_version", "serve_rest_api_version")),
    (_words("Trainer.fit", "Tuner.fit", "tune.run", "tune.run_experiments"), ("air_entrypoint",)),
)
RAY_TAG_SHAPES: dict[str, TagShape] = {name: shape for shape, names in _BY_SHAPE for name in names}
RAY_TAG_KEYS: frozenset[str] = frozenset(RAY_TAG_SHAPES)
