"""The DeepSpeed cross-check of the planner: DeepSpeed's own cold estimators next to ours, for full
fine-tuning, which is all DeepSpeed's estimators know.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import sys

from harness.planner.memory import GIB, PlanInput, estimate


def deepspeed_cold_estimate(zero_stage: int, total_params: int, largest_layer_params: int,
                            world_size: int, offload_optimizer: bool, offload_params: bool) -> dict:
    """DeepSpeed's own model-states estimate (full training, 16-bit) for one configuration.

    Calls the `*_all_cold` printer (captured as `table`) and the function it prints from for the
    row that matches our options. Raises ImportError when deepspeed is absent, ValueError for a
    stage DeepSpeed has no estimator for (0, 1). GiB: DeepSpeed divides by 2**30 and prints 'GB'."""
    if zero_stage == 2:
        with contextlib.redirect_stdout(sys.stderr):  # its import logs to stdout: keep --json clean
            from deepspeed.runtime.zero.stage_1_and_2 import (
                estimate_zero2_model_states_mem_needs, estimate_zero2_model_states_mem_needs_all_cold)
        with contextlib.redirect_stdout(io.StringIO()) as table:
            estimate_zero2_model_states_mem_needs_all_cold(total_params, num_gpus_per_node=world_size)
        cpu_b, gpu_b = estimate_zero2_model_states_mem_needs(
            total_params, num_gpus_per_node=world_size, cpu_offload=offload_optimizer)
    elif zero_stage == 3:
        with contextlib.redirect_stdout(sys.stderr):
            from deepspeed.runtime.zero.stage3 import (
                estimate_zero3_model_states_mem_needs, estimate_zero3_model_states_mem_needs_all_cold)
        with contextlib.redirect_stdout(io.StringIO()) as table:
            estimate_zero3_model_states_mem_needs_all_cold(total_params, largest_layer_params,
                                                           num_gpus_per_node=world_size)
        cpu_b, gpu_b, _ = estimate_zero3_model_states_mem_needs(
            total_params, largest_layer_params, num_gpus_per_node=world_size,
            cpu_offload=offload_optimizer, cpu_offload_params=offload_params)
    else:
        raise ValueError(f"DeepSpeed has estimators for ZeRO stages 2 and 3 only, not {zero_stage}")
    return {"gpu_gib": gpu_b / GIB, "cpu_gib": cpu_b / GIB, "table": table.getvalue()}


def deepspeed_crosscheck(inputs: PlanInput) -> dict:
    """DeepSpeed's cold estimate next to ours, both for FULL fine-tuning of the same model (what
    DeepSpeed's estimators assume: every parameter trained; they know nothing of LoRA) and for model
    states only (weights, gradients, optimizer, ZeRO buffers: no activations, no overhead)."""
    full = dataclasses.replace(inputs, full_finetune=True, freeze_vision=True, targets="lm")
    ours = estimate(full)
    ours_cpu = ours.cpu_bytes["total"] - ours.cpu_bytes["process_baseline"]
    result = {"zero_stage": inputs.zero_stage, "world_size": inputs.world_size,
              "total_params": ours.params["total"], "largest_layer_params": ours.params["largest_module"],
              "ours_gpu_gib": ours.details["model_states_gpu_gib"], "ours_cpu_gib": round(ours_cpu / GIB, 4)}
    try:
        ds = deepspeed_cold_estimate(inputs.zero_stage, ours.params["total"],
                                     ours.params["largest_module"], inputs.world_size,
                                     inputs.offload_optimizer, inputs.offload_params)
    except ImportError:
        return result | {"available": False, "reason": "deepspeed is not installed"}
    except ValueError as exc:
        return result | {"available": False, "reason": str(exc)}
    return result | {"available": True, "deepspeed_gpu_gib": round(ds["gpu_gib"], 4),
                     "deepspeed_cpu_gib": round(ds["cpu_gib"], 4), "deepspeed_table": ds["table"]}
