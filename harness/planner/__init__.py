"""The memory planner (`lorabench plan`): will a LoRA fine-tuning run of a real VLM fit in GPU memory?

Modules, one idea each:
- `shape`: model shapes (a model's architecture as numbers) and their JSON files;
- `hf_shape`: a Hugging Face checkpoint's config.json as a shape, counted on the meta device;
- `memory`: the estimate (`estimate(PlanInput) -> Plan`);
- `zero_memory`: what DeepSpeed ZeRO keeps on the GPU and in pinned host memory beyond the model states;
- `answers`: the error band, `fits`, `verdict`, `search_fits`;
- `published`: the cited published measurements, the fit / held-out split and the band they give;
- `deepspeed_check`: DeepSpeed's own estimators next to ours;
- `deepspeed_config`: a user's DeepSpeed config file as planner inputs (the ZeRO section the runs
  use comes from harness.planner.zero_templates, the same function for both);
- `validate`: the estimate against measured runs (imported on demand: it needs the results store);
- `dataset_lengths`: a run's training samples as LM lengths, and the whole run planned over them
  (imported on demand: it loads the model's processor).

The names below are the planner's API, so callers write `planner.estimate(...)` without knowing
which module holds what.
"""

from harness.planner.deepspeed_check import deepspeed_cold_estimate, deepspeed_crosscheck
from harness.planner.deepspeed_config import DeepSpeedSetup, read_deepspeed_config
from harness.planner.memory import (
    CUDA_CONTEXT_GIB, DEFAULT_BATCH_GRID, DEFAULT_MAX_LENGTH_GRID, FRAGMENTATION_FACTOR, GIB,
    LOGITS_BYTES_PER_ELEMENT, PRECISIONS, PROCESS_BASELINE_CPU_GIB, Plan, PlanInput,
    decoder_block_bytes_per_token, estimate, linear_input_bytes_per_token, plan_input_from_spec,
    vit_block_bytes_per_token)
from harness.planner.zero_memory import zero_buffer_bytes, zero_section
from harness.planner.answers import Band, fits, held_out_band, plan_dict, search_fits, verdict
from harness.planner.shape import (
    BUILTIN_SHAPES, SHAPES_DIR, SPEC_TARGETS, TARGET_PRESETS, TARGET_SETS, ImageTokens, Linear,
    Shape, Tower, builtin_shape, load_shape, qwen2_vl_image_tokens, shape_from_dict, shape_to_dict)
from harness.planner.hf_shape import HF_ARCHITECTURES, shape_from_hf_config, shape_from_model

__all__ = [
    "BUILTIN_SHAPES", "Band", "CUDA_CONTEXT_GIB", "DEFAULT_BATCH_GRID", "DEFAULT_MAX_LENGTH_GRID",
    "FRAGMENTATION_FACTOR", "GIB", "HF_ARCHITECTURES", "LOGITS_BYTES_PER_ELEMENT", "PRECISIONS",
    "PROCESS_BASELINE_CPU_GIB", "SHAPES_DIR", "SPEC_TARGETS", "TARGET_PRESETS", "TARGET_SETS", "DeepSpeedSetup",
    "ImageTokens", "Linear", "Plan", "PlanInput", "Shape", "Tower",
    "builtin_shape", "decoder_block_bytes_per_token", "deepspeed_cold_estimate", "deepspeed_crosscheck",
    "estimate", "fits", "held_out_band", "plan_dict", "linear_input_bytes_per_token", "load_shape",
    "plan_input_from_spec",
    "qwen2_vl_image_tokens", "search_fits", "shape_from_dict", "shape_from_hf_config", "shape_from_model",
    "shape_to_dict", "read_deepspeed_config", "verdict", "vit_block_bytes_per_token", "zero_buffer_bytes",
    "zero_section",
]
