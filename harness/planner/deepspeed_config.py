"""A user's own DeepSpeed config as planner inputs: ZeRO stage, offloads, precision and the buffers.

`lorabench plan --deepspeed-config FILE` reads the file the user trains with. Its zero_optimization
section is checked the way DeepSpeed checks it (an unknown key is an error there too, so a misspelt
budget never silently falls back to a default), "auto" values are resolved with Hugging Face's rule
from the model's hidden size (the same function the runs use: harness.planner.zero_templates.resolve_auto),
and keys left out take DeepSpeed's defaults. Every problem is one UserError line naming the file.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from harness.errors import UserError
from harness.planner.zero_templates import HF_AUTO, resolve_auto

# DeepSpeed 0.19.8's defaults (deepspeed/runtime/zero/config.py) for the keys the planner reads.
DEEPSPEED_DEFAULTS = {
    "reduce_bucket_size": 500_000_000,
    "allgather_bucket_size": 500_000_000,
    "contiguous_gradients": True,
    "sub_group_size": 1_000_000_000,
    "stage3_prefetch_bucket_size": 50_000_000,
    "stage3_param_persistence_threshold": 100_000,
    "stage3_max_live_parameters": 1_000_000_000,
    "stage3_max_reuse_distance": 1_000_000_000,
}

# Every key DeepSpeed 0.19.8's DeepSpeedZeroConfig accepts in zero_optimization (field names and
# their aliases; it rejects any other). tests/planner/test_plan.py compares this with DeepSpeed's own list.
ZERO_KEYS = frozenset({
    "allgather_bucket_size", "allgather_partitions", "allgather_sequential", "compute_grad_norm",
    "contiguous_gradients", "cpu_offload", "cpu_offload_param", "cpu_offload_use_pin_memory",
    "elastic_checkpoint", "enable_sanity_checks", "gather_16bit_weights_on_model_save",
    "ignore_unused_parameters", "leaf_module", "legacy_stage1", "load_from_fp32_weights",
    "log_trace_cache_warnings", "max_live_parameters", "max_reuse_distance", "memory_efficient_linear",
    "model_persistence_threshold", "module_granularity_threshold", "offload_optimizer", "offload_param",
    "overlap_comm", "override_module_apply", "param_persistence_threshold", "parameter_alignment",
    "pipeline_loading_checkpoint", "prefetch_bucket_size", "reduce_bucket_size", "reduce_scatter",
    "round_robin_gradients", "save_muon_momentum_buffer_in_memory", "stage",
    "stage3_allgather_sequential", "stage3_gather_16bit_weights_on_model_save",
    "stage3_gather_fp16_weights_on_model_save", "stage3_max_live_parameters", "stage3_max_reuse_distance",
    "stage3_model_persistence_threshold", "stage3_module_granularity_threshold",
    "stage3_param_persistence_threshold", "stage3_prefetch_bucket_size",
    "stage3_use_all_reduce_for_fetch_params", "sub_group_size", "use_all_reduce_for_fetch_params",
    "use_multi_rank_bucket_allreduce", "zenflow", "zero_hpz_partition_size", "zero_quantized_gradients",
    "zero_quantized_nontrainable_weights", "zero_quantized_weights",
})
# DeepSpeed accepts the stage3_* budgets under their short field names too; the planner reads the
# long ones.
_SHORT_NAMES = {"max_live_parameters": "stage3_max_live_parameters",
                "max_reuse_distance": "stage3_max_reuse_distance",
                "prefetch_bucket_size": "stage3_prefetch_bucket_size",
                "param_persistence_threshold": "stage3_param_persistence_threshold"}
_COUNTS = tuple(DEEPSPEED_DEFAULTS.keys() - {"contiguous_gradients"})


@dataclasses.dataclass(frozen=True)
class DeepSpeedSetup:
    """What a DeepSpeed config file sets for the planner."""

    zero_stage: int
    offload_optimizer: bool
    offload_params: bool
    precision: str | None  # "bf16" / "fp16" / "fp32" when the file decides it; None for "auto"
    zero: dict  # zero_optimization, "auto" resolved, defaults filled, long key names


def read_deepspeed_config(path: str | Path, hidden_size: int) -> DeepSpeedSetup:
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"{path}: cannot read the DeepSpeed config ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: a DeepSpeed config is a JSON object, got {type(doc).__name__}")
    zero = doc.get("zero_optimization", {"stage": 0})
    if not isinstance(zero, dict):
        raise UserError(f"{path}: zero_optimization must be an object")
    return DeepSpeedSetup(zero_stage=_stage(path, zero), offload_optimizer=_offload(path, zero, "offload_optimizer"),
                          offload_params=_offload(path, zero, "offload_param"),
                          precision=_precision(path, doc), zero=_resolved(path, zero, hidden_size))


def _stage(path: Path, zero: dict) -> int:
    stage = zero.get("stage", 0)
    if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        raise UserError(f"{path}: zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")
    return int(stage)


def _offload(path: Path, zero: dict, key: str) -> bool:
    legacy = {"offload_optimizer": "cpu_offload", "offload_param": "cpu_offload_param"}[key]
    section = zero.get(key)
    if section is None:
        return zero.get(legacy) is True  # DeepSpeed's deprecated boolean spelling
    device = section.get("device", "none") if isinstance(section, dict) else None
    if device == "nvme":
        raise UserError(f"{path}: zero_optimization.{key}.device 'nvme' is not modelled (the planner knows "
                        "GPU and CPU memory only)")
    if device not in ("none", "cpu"):
        raise UserError(f"{path}: zero_optimization.{key} must be an object with device 'none', 'cpu' or "
                        f"'nvme', got {section!r}")
    return device == "cpu"


def _precision(path: Path, doc: dict) -> str | None:
    """The precision the file decides: a section enabled (true) names it, both sections disabled
    (false) mean fp32; "auto" or a missing section leaves it to the Trainer (None)."""
    enabled = {}
    for name in ("bf16", "fp16"):
        if name not in doc:
            enabled[name] = None
            continue
        section = doc[name]
        value = section.get("enabled", False) if isinstance(section, dict) else None
        if value not in (True, False, "auto"):
            raise UserError(f"{path}: {name} must be an object with enabled true, false or \"auto\"")
        enabled[name] = value
    if enabled["bf16"] is True and enabled["fp16"] is True:
        raise UserError(f"{path}: bf16 and fp16 are both enabled")
    if enabled["bf16"] is True or enabled["fp16"] is True:
        return "bf16" if enabled["bf16"] is True else "fp16"
    return "fp32" if enabled["bf16"] is False and enabled["fp16"] is False else None


def _resolved(path: Path, zero: dict, hidden_size: int) -> dict:
    unknown = sorted(set(zero) - ZERO_KEYS)
    if unknown:
        raise UserError(f"{path}: zero_optimization.{unknown[0]}: unknown key (DeepSpeed rejects it too)")
    out = {_SHORT_NAMES.get(k, k): v for k, v in zero.items()}
    out["stage"] = _stage(path, zero)
    for key, value in out.items():
        if value == "auto" and key not in HF_AUTO:
            raise UserError(f"{path}: zero_optimization.{key}: \"auto\" is filled in only for "
                            f"{', '.join(HF_AUTO)} (by the Hugging Face integration)")
    out = resolve_auto(out, hidden_size)
    for key in HF_AUTO:  # stage3_* keys left "auto" below stage 3 are never read
        if out.get(key) == "auto":
            out.pop(key)
    for key in _COUNTS:
        value = out.get(key, DEEPSPEED_DEFAULTS[key])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise UserError(f"{path}: zero_optimization.{key} must be a number >= 0 or \"auto\", got {value!r}")
        out[key] = int(value)
    out.setdefault("contiguous_gradients", DEEPSPEED_DEFAULTS["contiguous_gradients"])
    return out
