"""DeepSpeed configs of runs, and the ZeRO settings the planner estimates with: one function for both.

One config for both frameworks (written to the run directory, passed by path to TrainingArguments /
SftArguments), so ZeRO settings are aligned by construction. Its ZeRO section is what users run:
ms-swift's own templates (swift/config/zero2.json, zero3.json; zero3_offload.json only turns the two
offloads on), with the Hugging Face integration's rule for the "auto" values it leaves
(transformers.integrations.deepspeed: reduce_bucket_size = h^2, stage3_prefetch_bucket_size =
0.9 h^2, stage3_param_persistence_threshold = 10 h, h = the language model's hidden size). Values are
written resolved, so the file says what DeepSpeed got and the planner reads the same numbers.

Small models: the templates' absolute budgets (element counts such as stage3_max_live_parameters =
1e9) are sized for ~7B models. On a model the live budget would hold whole (<= 1e9 parameters, e.g.
the embedded 2.2 M tiny model) ZeRO-3 would never release a gathered parameter and its partitioning
would not show; there each absolute budget keeps the proportion it has to a 7B model:
value = 1024 * ceil(max(template * params / 7e9, h^2) / 1024) (docs/distributed.md has the table).

Measured pitfalls shape the rest:
- with > 1 process, `train_batch_size: "auto"` is left out: transformers fills it while the world
  size is still 1 and DeepSpeed then asserts `4 != 4 * 1 * 2`;
- offload to the CPU uses DeepSpeedCPUAdam (compiled on first use, cached in TORCH_EXTENSIONS_DIR);
- pinned host memory needs CUDA: pin_memory is the template's true on a GPU, false on the CPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from harness.errors import UserError
from harness.planner.hf_shape import shape_from_hf_config
from harness.run_spec import Spec

REFERENCE_PARAMS = 7e9  # the model size the templates' absolute budgets are set for
BUDGET_ALIGNMENT = 1024  # scaled budgets are whole multiples (DeepSpeed wants an even allgather bucket)

# ms-swift 4.6.0's zero_optimization sections, stage aside (zero0.json, zero1.json and zero2.json
# share theirs; zero3.json and zero3_offload.json differ only in the offload devices).
SWIFT_ZERO_0_TO_2 = {
    "allgather_partitions": True, "allgather_bucket_size": 200_000_000, "overlap_comm": False,
    "reduce_scatter": True, "reduce_bucket_size": 200_000_000, "contiguous_gradients": True,
}
SWIFT_ZERO_3 = {
    "overlap_comm": False, "contiguous_gradients": True, "sub_group_size": 1_000_000_000,
    "reduce_bucket_size": "auto", "zero_quantized_weights": False, "zero_quantized_gradients": False,
    "stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto",
    "stage3_max_live_parameters": 1_000_000_000, "stage3_max_reuse_distance": 1_000_000_000,
    "stage3_gather_16bit_weights_on_model_save": True,
}
# Absolute element counts in the templates: the budgets scaled on small models. (The "auto" keys
# follow the hidden size, so they scale with the model already.)
ABSOLUTE_BUDGETS = ("allgather_bucket_size", "reduce_bucket_size", "sub_group_size",
                    "stage3_max_live_parameters", "stage3_max_reuse_distance")
# The Hugging Face integration's "auto" values from the hidden size h: reduce_bucket_size at every
# stage, the two stage3_* keys at stage 3 only.
HF_AUTO = {
    "reduce_bucket_size": lambda h: h * h,
    "stage3_prefetch_bucket_size": lambda h: int(0.9 * h * h),
    "stage3_param_persistence_threshold": lambda h: 10 * h,
}


@dataclasses.dataclass(frozen=True)
class ModelSize:
    """What the ZeRO settings depend on: the hidden size (HF's "auto") and the parameter count
    (the small-model scaling; None when unknown: treated as a full-size model)."""

    hidden_size: int
    total_params: int | None = None


def resolve_auto(zero: dict, hidden_size: int) -> dict:
    """The zero_optimization section with Hugging Face's "auto" values filled from the hidden size,
    as transformers' HfTrainerDeepSpeedConfig.trainer_config_finalize does (other keys unchanged)."""
    out = dict(zero)
    for key, rule in HF_AUTO.items():
        if out.get(key) == "auto" and (key == "reduce_bucket_size" or out.get("stage") == 3):
            out[key] = rule(hidden_size)
    return out


def scale_budgets(zero: dict, model: ModelSize) -> dict:
    """The absolute budgets scaled to a model the template's live budget would hold whole (see the
    module docstring); a full-size or unknown-size model keeps the template's values."""
    live_budget = SWIFT_ZERO_3["stage3_max_live_parameters"]
    if model.total_params is None or model.total_params > live_budget:
        return dict(zero)
    floor = model.hidden_size ** 2  # never below one h x h weight: a budget smaller than a layer means nothing
    out = dict(zero)
    for key in ABSOLUTE_BUDGETS:
        value = out.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            scaled = max(value * model.total_params / REFERENCE_PARAMS, floor)
            out[key] = BUDGET_ALIGNMENT * math.ceil(scaled / BUDGET_ALIGNMENT)
    return out


def zero_optimization(stage: int, model: ModelSize, offload_optimizer: bool = False,
                      offload_params: bool = False, pin_memory: bool = True) -> dict:
    """The zero_optimization section runs use (and the planner estimates from), fully resolved."""
    zero: dict = {"stage": stage, **(SWIFT_ZERO_3 if stage == 3 else SWIFT_ZERO_0_TO_2)}
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin_memory}
    if offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": pin_memory}
    return resolve_auto(scale_budgets(zero, model), model.hidden_size)


def hidden_size_of(config: dict) -> int | None:
    """The hidden size Hugging Face's "auto" uses: the model config's hidden_size (or largest of
    hidden_sizes), else its text_config's (Qwen2-VL keeps it there)."""
    for part in (config, config.get("text_config") or {}):
        if part.get("hidden_size"):
            return int(part["hidden_size"])
        if part.get("hidden_sizes"):
            return int(max(part["hidden_sizes"]))
    return None


def model_size_of(model_dir: str | Path) -> ModelSize:
    """Hidden size and parameter count of a checkpoint, from its config.json (nothing is loaded).
    The count comes from the planner's shape of the architecture; None where it has none."""

    path = Path(model_dir)
    config = json.loads((path / "config.json" if path.is_dir() else path).read_text())
    hidden = hidden_size_of(config)
    if hidden is None:
        raise UserError(f"{model_dir}: config.json has no hidden_size (needed for the DeepSpeed buckets)")
    try:
        total = shape_from_hf_config(path).total_params
    except (UserError, KeyError, ValueError, TypeError):
        total = None
    return ModelSize(hidden, total)


def deepspeed_config(spec: Spec, model: ModelSize) -> dict | None:
    """The DeepSpeed config of a run of `spec` on a model of this size (None without ZeRO)."""
    dist = spec.distributed
    if dist.zero_stage is None:
        return None
    precision = spec.train.precision
    zero = zero_optimization(dist.zero_stage, model, dist.offload_optimizer, dist.offload_params,
                             pin_memory=spec.device == "cuda")
    config = {
        "zero_optimization": zero,
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "fp16": {"enabled": precision == "fp16"},
        "bf16": {"enabled": precision == "bf16"},
    }
    if dist.offload_optimizer:
        # ZeRO-Offload steps the optimizer on the CPU with DeepSpeedCPUAdam (compiled on first use);
        # "auto" takes lr, betas, eps and weight decay from the spec through the Trainer arguments.
        config["optimizer"] = {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                          "weight_decay": "auto"}}
    if dist.world_size == 1:
        config["train_batch_size"] = "auto"
    return config


