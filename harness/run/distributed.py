"""DeepSpeed configs and launch commands for multi-process runs.

One config for both frameworks (passed as a dict to TrainingArguments / SftArguments), so ZeRO
settings are aligned by construction. Measured pitfalls shape it:
- with > 1 process, `train_batch_size: "auto"` is left out: transformers fills it while the world
  size is still 1 and DeepSpeed then asserts `4 != 4 * 1 * 2`;
- offload to the CPU uses DeepSpeedCPUAdam (compiled on first use, cached in TORCH_EXTENSIONS_DIR).
"""

from __future__ import annotations


def deepspeed_config(spec: dict) -> dict | None:
    dist = spec["distributed"]
    if dist["zero_stage"] is None:
        return None
    precision = spec["train"]["precision"]
    zero: dict = {"stage": dist["zero_stage"]}
    if dist["offload_optimizer"]:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
        # ZeRO-Offload steps the optimizer on the CPU with DeepSpeedCPUAdam (compiled on first use);
        # "auto" takes lr, betas, eps and weight decay from the spec through the Trainer arguments.
        optimizer = {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                 "weight_decay": "auto"}}
    if dist["offload_params"]:
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    if dist["zero_stage"] == 3:
        # Small live-parameter budget: makes ZeRO-3's partitioning visible on a small model (facts).
        zero.update({"stage3_max_live_parameters": 1e6, "stage3_max_reuse_distance": 0,
                     "stage3_prefetch_bucket_size": 1e6, "stage3_param_persistence_threshold": 0,
                     "stage3_gather_16bit_weights_on_model_save": True})
    config = {
        "zero_optimization": zero,
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "fp16": {"enabled": precision == "fp16"},
        "bf16": {"enabled": precision == "bf16"},
    }
    if dist["offload_optimizer"]:
        config["optimizer"] = optimizer
    if dist["world_size"] == 1:
        config["train_batch_size"] = "auto"
    return config


def deepspeed_config_file(spec: dict, out_dir) -> str | None:
    """Write the config into the run directory and return its path (both frameworks take a path;
    swift would try to parse a dict as a name or JSON string)."""
    import json
    from pathlib import Path

    config = deepspeed_config(spec)
    if config is None:
        return None
    path = Path(out_dir) / "deepspeed.json"
    path.write_text(json.dumps(config, indent=1))
    return str(path)


def enable_cpu_deepspeed_data_parallel() -> None:
    """Make accelerate treat a multi-process DeepSpeed run on the CPU as distributed.

    Measured (accelerate 1.15, transformers 5.19): with DeepSpeed and no CUDA, accelerate's
    `PartialState._prepare_backend` finds no backend and sets `num_processes = 1`, while DeepSpeed
    itself joins the process group. Training then runs, ZeRO partitions and reduces across ranks, but
    every rank reads the *same* batches (no distributed sampler): the global batch is not
    batch x world_size. Giving accelerate gloo for that case restores data parallelism. It is a
    no-op with CUDA, with one process, and with `use_cpu` (plain DDP on gloo already works).
    """
    import accelerate.state as state
    from accelerate.utils import DistributedType

    original = state.PartialState._prepare_backend
    if getattr(original, "_lorabench", False):
        return

    def _prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
        import os

        import torch

        found, kind = original(self, cpu, sagemaker_dp, backend)
        if (found is None and not cpu and not torch.cuda.is_available()
                and int(os.environ.get("LOCAL_RANK", -1)) != -1 and int(os.environ.get("WORLD_SIZE", 1)) > 1):
            return "gloo", DistributedType.MULTI_CPU
        return found, kind

    _prepare_backend._lorabench = True
    state.PartialState._prepare_backend = _prepare_backend
