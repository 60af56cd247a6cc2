"""What DeepSpeed ZeRO keeps on each GPU and in the node's host memory, beyond the model states.

Every size here is read from DeepSpeed 0.19.8's source (deepspeed/runtime/zero/stage3.py,
parameter_offload.py, partitioned_param_coordinator.py, partition_parameters.py) and PyTorch's pinned
host allocator; the line each term follows is named where it is used. Element counts come from the
zero_optimization section a run has (harness.planner.zero_templates for the runs' own), keys left out
take DeepSpeed's defaults (harness.planner.deepspeed_config.DEEPSPEED_DEFAULTS).

Units: counts are elements (parameters); memory is bytes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping

from harness.planner.deepspeed_config import DEEPSPEED_DEFAULTS
from harness.planner.shape import LM_ONLY_TARGETS, Shape, Tower, lm_lora_filter
from harness.planner.zero_templates import ModelSize, zero_optimization


def zero_get(zero: Mapping, key: str) -> int:
    """A zero_optimization value, DeepSpeed's default when the section leaves it out."""
    return int(zero.get(key, DEEPSPEED_DEFAULTS[key]))


def zero_section(p) -> dict:
    """The zero_optimization section the estimate reads its buffers from: the input's own, else the
    one a run of this shape gets (the same function writes the runs' DeepSpeed config); {} without
    ZeRO (stage 0). `p` is a PlanInput."""
    if p.zero_config is not None:
        return dict(p.zero_config)
    if p.zero_stage == 0:
        return {}
    model = ModelSize(hidden_size=p.shape.language_model.hidden, total_params=p.shape.total_params)
    return zero_optimization(p.zero_stage, model, p.offload_optimizer, p.offload_params)


def zero_buffer_bytes(zero: Mapping, w: int, total: int, largest_module: int, largest_trained_module: int,
                      persistent: int = 0) -> int:
    """GPU bytes DeepSpeed holds beyond the model states, from the zero_optimization section:
    - the reduce bucket: with contiguous_gradients DeepSpeed allocates all of reduce_bucket_size
      elements up front in the 16-bit dtype (stage3.py: `bucket.buffer = torch.empty(self.reduce_bucket_size,
      ...)` on the device), twice at stages 1-2 with overlap_comm (double buffer);
    - stage 3: gathered (un-partitioned) parameters, up to stage3_max_live_parameters live and at
      least the largest module. Prefetching stays inside that budget: the coordinator fetches
      min(max_live - available, stage3_prefetch_bucket_size) ahead (partitioned_param_coordinator.py).
      Persistent parameters are whole anyway (counted apart), so they are not gathered again;
    - stage 3: the full gradient of the largest trained base module before its reduce-scatter.
    No allgather bucket: stages 1-2 gather into the 16-bit parameter buffer already counted."""
    stage = zero.get("stage", 0)
    if not stage:
        return 0
    overlap = zero.get("overlap_comm")
    overlap = stage == 3 if overlap is None else overlap  # DeepSpeed's default: on at stage 3 only
    reduce = w * zero_get(zero, "reduce_bucket_size") if zero.get(
        "contiguous_gradients", DEEPSPEED_DEFAULTS["contiguous_gradients"]) else 0
    if stage in (1, 2):
        return reduce * (2 if overlap else 1)
    gathered = min(total - persistent, max(zero_get(zero, "stage3_max_live_parameters"), largest_module))
    return reduce + w * gathered + w * largest_trained_module


@dataclasses.dataclass(frozen=True)
class Tensor:
    """`count` parameter tensors of `numel` elements; `lora` tells LoRA's from the base model's."""

    numel: int
    count: int
    lora: bool = False


def _tower_tensors(t: Tower, lora_r: int, lora_only, with_lora: bool) -> Iterator[Tensor]:
    """A tower's parameter tensors. Norm weights (a block's other parameters) are vectors of the
    tower's width at most; the tower's other parameters (embeddings, lm_head, patch embedding) are
    counted as one tensor, which only makes them look larger: none of them is near a threshold."""
    groups = ((t.block_linears, t.layers), (t.linears, 1))
    for linears, count in groups:
        for linear in linears:
            yield Tensor(linear.in_features * linear.out_features, count)
            if linear.bias:
                yield Tensor(linear.out_features, count)
    if t.block_other_params and t.layers:
        width = max(t.hidden, 1)
        yield Tensor(width, t.layers * t.block_other_params // width)
        rest = t.layers * (t.block_other_params % width)
        if rest:
            yield Tensor(rest, 1)
    if t.other_params:
        yield Tensor(t.other_params, 1)
    if with_lora:
        for linears, count in groups:
            for linear in (filter(lora_only, linears) if lora_only else linears):
                yield Tensor(lora_r * linear.in_features, count, lora=True)  # lora_A: r x in
                yield Tensor(linear.out_features * lora_r, count, lora=True)  # lora_B: out x r


def parameter_tensors(shape: Shape, targets: str, lora_r: int, with_lora: bool = True) -> list[Tensor]:
    """Every parameter tensor of the model with LoRA on `targets` (each tower's own)."""
    lm = lm_lora_filter(targets)
    return (list(_tower_tensors(shape.language_model, lora_r, lm, with_lora))
            + list(_tower_tensors(shape.vision, lora_r, None, with_lora and targets not in LM_ONLY_TARGETS))
            + list(_tower_tensors(shape.projector, lora_r, None, with_lora and targets == "all-linear")))


def persistent_elements(tensors: list[Tensor], threshold: int) -> tuple[int, int]:
    """(base, LoRA) elements ZeRO-3 keeps whole on every GPU: every tensor with ds_numel <=
    stage3_param_persistence_threshold (parameter_offload.py, mark_persistent_parameters; the
    model_persistence_threshold cap is unlimited by default). They stay on the GPU with parameter
    offload too. Hugging Face's "auto" threshold is 10 h: LoRA's A and B matrices (r x h) fall below
    it, so under ZeRO-3 every GPU holds the whole adapter."""
    base = sum(t.numel * t.count for t in tensors if t.numel <= threshold and not t.lora)
    lora = sum(t.numel * t.count for t in tensors if t.numel <= threshold and t.lora)
    return base, lora


def pow2_ceil(n: int) -> int:
    """PyTorch's caching host allocator rounds each pinned allocation up to a power of two
    (ATen/core/CachingHostAllocator.h: `c10::llvm::PowerOf2Ceil(size)`, with no size limit by default)."""
    return 1 << (n - 1).bit_length() if n > 1 else n


def pinned_partitions_bytes(tensors: list[Tensor], world_size: int, w: int, threshold: int) -> int:
    """Node bytes of ZeRO-3's offloaded parameter partitions: zero.Init pins each parameter's own
    partition on the CPU (partition_parameters.py: `partitioned_tensor = get_accelerator().pin_memory(...)`),
    ceil(numel / world size) elements on each process, each rounded to a power of two."""
    total = 0
    for t in tensors:
        if t.numel <= threshold:
            continue  # persistent: whole on the GPU, not partitioned to the CPU
        part = -(-t.numel // world_size)
        total += t.count * world_size * pow2_ceil(part * w)
    return total


def stage3_optimizer_step_bytes(zero: Mapping, trainable_partition: int) -> int:
    """The GPU transient of ZeRO-3's optimizer step without optimizer offload: the step converts one
    sub-group's 16-bit gradient partition to fp32 (stage3.py, _prepare_fp32_grad_for_sub_group:
    `self.flatten(self.averaged_gradients[sub_group_id]).to(fp32)`), at most sub_group_size elements
    of this GPU's partition. Full fine-tuning with ms-swift's sub_group_size 1e9 makes it 3.73 GiB,
    the "Tried to allocate 3.74 GiB" users report at the step."""
    return 4 * min(zero_get(zero, "sub_group_size"), trainable_partition)


def stage3_offload_cpu_bytes(zero: Mapping, trainable: int, world_size: int, w: int) -> dict:
    """Node bytes of ZeRO-3's optimizer offload, per process summed over the processes:
    - Adam m, v and the fp32 master partition (not pinned): 12 B per trainable element;
    - the fp32 gradient of each sub-group, pinned (stage3.py, initialize_optimizer_states:
      `subgroup_gradient_buffer = get_accelerator().pin_memory(...)`);
    - the 16-bit gradient partitions, pinned (stage3.py: `grad_partitions_flat_buffer` on the CPU
      device when offloading, pinned with offload_optimizer.pin_memory).
    Pinned buffers are rounded to a power of two each (pow2_ceil)."""
    part = -(-trainable // world_size)
    pin = bool((zero.get("offload_optimizer") or {}).get("pin_memory", False))
    rounded = pow2_ceil if pin else (lambda n: n)
    sub = zero_get(zero, "sub_group_size")
    full, rest = divmod(part, sub) if sub else (0, part)
    fp32_grads = full * rounded(4 * sub) + (rounded(4 * rest) if rest else 0)
    return {"optimizer": world_size * 12 * part,
            "pinned_gradients": world_size * (fp32_grads + rounded(w * part))}
