"""What a run needs to train on several processes: its DeepSpeed config file, and accelerate set up
for data parallelism on the CPU. The config itself is built by harness.planner.zero_templates, the
function the planner estimates with, so runs and estimates read the same ZeRO settings."""

from __future__ import annotations

import json
from pathlib import Path

from harness.planner.zero_templates import deepspeed_config, model_size_of
from harness.run_spec import Spec


def deepspeed_config_file(spec: Spec, out_dir, model_dir) -> str | None:
    """Write the run's config into its directory and return the path (both frameworks take a path;
    swift would try to parse a dict as a name or JSON string); None without ZeRO."""
    if spec.distributed.zero_stage is None:
        return None
    path = Path(out_dir) / "deepspeed.json"
    path.write_text(json.dumps(deepspeed_config(spec, model_size_of(model_dir)), indent=1))
    return str(path)


def enable_cpu_data_parallel() -> None:
    """Make accelerate treat a multi-process run on the CPU as distributed.

    Measured (accelerate 1.15, transformers 5.19): with DeepSpeed and no CUDA, accelerate's
    `PartialState._prepare_backend` finds no backend and sets `num_processes = 1`, while DeepSpeed
    itself joins the process group. Training then runs, ZeRO partitions and reduces across ranks, but
    every rank reads the *same* batches (no distributed sampler): the global batch is not
    batch x world_size. Without DeepSpeed, ms-swift (which does not pass `use_cpu`) is worse off:
    each process trains alone as a world of one (measured by the accumulation check: its step loss
    over 2 processes differed by 0.15 from 1 process with accumulation 2). Giving accelerate gloo
    for these cases restores data parallelism. It is a no-op with CUDA, with one process, and with
    `use_cpu` (plain DDP on gloo already works).
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
