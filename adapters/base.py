"""The adapter protocol: what every framework wrapper provides, and what it returns.

In the spirit of lm-evaluation-harness's `LM`: a Protocol, no implementation inheritance. Shared
helpers are plain functions, one module per idea: the LoRA config and snapshots (`adapters.lora_setup`),
the rows and collator (`adapters.chat_data`), read-back of live objects (`adapters.readback`) and
per-step recording (`adapters.trainer_steps`); the target presets are `harness.lora_targets`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Protocol
from harness.run_spec import Spec


@dataclasses.dataclass
class TrainOutcome:
    """What `train` returns. Every field is read from the live run, never copied from the spec."""

    adapter_dir: Path  # PEFT format: adapter_config.json + adapter_model.safetensors
    initial_adapter: Path  # safetensors of the LoRA tensors before the first step (parity compares them)
    steps: list[dict]  # one per optimizer step: step, loss, lr, grad_norm, tokens, samples, seconds
    effective: dict[str, Any]  # flat name -> value, read back from model / optimizer / scheduler / loader
    setup_s: float  # process start of training (imports excluded) to the first step
    train_s: float
    framework_args: Path | None = None  # the framework's own arguments as resolved (TrainingArguments, SftArguments)
    command_line: Path | None = None  # how to run the same training outside lorabench (a command or a script)
    probe: Path | None = None  # the live model's logits and trainable tensors (adapters.readback.save_probe)


class Adapter(Protocol):
    name: str

    def train(self, spec: Spec, data: "TrainData", out_dir: Path, hooks: "Hooks") -> TrainOutcome:
        """Train with LoRA as `spec` says (in this process) and save the adapter under `out_dir`.

        `data` gives the train JSONL (absolute image paths) and the model directory. `hooks`
        receives per-step records (progress bars, meters) and may be a no-op.
        """


@dataclasses.dataclass(frozen=True)
class TrainData:
    model_dir: Path
    train_jsonl: Path  # rows: id, messages (user with <image>, assistant target), images (absolute)
    n_samples: int
    deepspeed_config: Path | None = None  # the run's DeepSpeed config file, written by the harness; None: no ZeRO


class Hooks:
    """Callbacks from inside a framework's loop to the harness; all optional."""

    def on_train_begin(self) -> None:  # meters reset their peaks here: memory covers training only
        pass

    def on_step(self, record: dict) -> None:
        pass
