"""What each framework does with a setting a user leaves unset: one table, per framework and release.

The ablation (`lorabench parity --ablate`, harness.analysis.parity) reverts one factor at a time to
these values, and the `swift-default` profile (harness.config.profiles) takes its accumulation rule
from here, so the two cannot disagree. Each value names the release and file it was read from; tests
check the accumulation rule against the installed ms-swift's own argument object, and every default
in ARG_DEFAULTS against the installed releases' argument dataclasses (a release that moves one fails,
naming the field).
"""

from __future__ import annotations

import dataclasses
import math

from harness.run_spec import Spec

RELEASES = {"peft": "transformers 5.19 + peft 0.20", "swift": "ms-swift 4.6.0",
            "llamafactory": "llamafactory 0.9.5 + transformers 5.6"}
SOURCES = {
    "peft": "transformers TrainingArguments defaults (learning_rate 5e-5, weight_decay 0, adam betas 0.9/0.999, "
            "linear schedule, no warm-up, gradient_accumulation_steps 1, no gradient checkpointing) and peft "
            "LoraConfig defaults (lora_alpha 8, lora_dropout 0) with target_modules='all-linear' (every Linear "
            "but the output layer, the vision tower's included); a cookbook collator labels every non-pad token",
    "swift": "swift/arguments/tuner_args.py (lora_alpha 32, lora_dropout 0.05, all-linear on the language model: "
             "freeze_vit), swift/arguments/sft_args.py and swift/trainers/arguments.py (learning_rate 1e-4 for "
             "LoRA, weight_decay 0.1, adam_beta2 0.95, cosine, gradient_accumulation_steps "
             "ceil(16 / per_device_batch / world_size), gradient checkpointing on, dataset shuffle)",
    "llamafactory": "src/llamafactory/hparams/finetuning_args.py (lora_rank 8, lora_alpha 2 x rank, lora_dropout 0, "
                    "lora_target all on the language model: freeze_vision_tower), model_args.py (gradient "
                    "checkpointing on), data_args.py (answer-only labels), train/sft/trainer.py (mean of "
                    "micro-batch means), transformers 5.6 TrainingArguments for the optimizer and schedule",
}


def swift_grad_accum(batch_size: int, world_size: int) -> int:
    """ms-swift's accumulation when `gradient_accumulation_steps` is unset, written as
    `TrainArgumentsMixin.__post_init__` writes it: a global batch of about 16 samples over all processes."""
    return max(1, math.ceil(16 / batch_size / world_size))


def native_grad_accum(framework: str, batch_size: int, world_size: int) -> int:
    """Accumulation steps a framework picks by itself: ms-swift's rule, the Trainer's 1."""
    return swift_grad_accum(batch_size, world_size) if framework == "swift" else 1


# Each factor's native value per framework, as spec overrides. PEFT's all-linear = every-linear
# (vision tower included); swift's all-linear = lm-linear (language model only: freeze_vit).
# `accumulation` depends on the spec's batch and processes: see native_override.
NATIVE_FACTORS: dict[str, dict[str, dict]] = {
    "targets": {"peft": {"lora": {"targets": "every-linear"}}, "swift": {"lora": {"targets": "lm-linear"}}},
    "alpha": {"peft": {"lora": {"alpha": 8}}, "swift": {"lora": {"alpha": 32}}},
    "dropout": {"peft": {"lora": {"dropout": 0.0}}, "swift": {"lora": {"dropout": 0.05}}},
    "lr": {"peft": {"optim": {"lr": 5e-5}}, "swift": {"optim": {"lr": 1e-4}}},
    "weight_decay": {"peft": {"optim": {"weight_decay": 0.0}}, "swift": {"optim": {"weight_decay": 0.1}}},
    "beta2": {"peft": {"optim": {"betas": [0.9, 0.999]}}, "swift": {"optim": {"betas": [0.9, 0.95]}}},
    "scheduler": {"peft": {"schedule": {"type": "linear", "warmup_steps": 0}},
                  "swift": {"schedule": {"type": "cosine", "warmup_steps": 0}}},
    "accumulation": {"peft": {"train": {"grad_accum": None}}, "swift": {"train": {"grad_accum": None}}},
    "loss_norm": {"peft": {"train": {"loss_norm": "tokens"}}, "swift": {"train": {"loss_norm": "mean_of_means"}}},
    "data_order": {"peft": {"train": {"data_order": "sampler"}}, "swift": {"train": {"data_order": "swift_shuffle"}}},
    "template": {"peft": {"train": {"label_mask": "all"}}, "swift": {"train": {"label_mask": "answer"}}},
    "grad_checkpointing": {"peft": {"train": {"grad_checkpointing": False}},
                           "swift": {"train": {"grad_checkpointing": True}}},
    "precision": {"peft": {"train": {"precision": "fp32"}}, "swift": {"train": {"precision": "fp32"}}},
}
FACTOR_NOTES = {
    "accumulation": "swift picks ceil(16 / (batch x processes)) accumulation steps, the Trainer 1: a different "
                    "global batch",
    "loss_norm": "not a native difference today (swift and transformers >= 4.46 both normalise per token over the "
                 "accumulated batch); the mean of micro-batch means of transformers < 4.46 is put on one side",
    "precision": "swift switches fp16 on for fp32 models only on a GPU; on the CPU both stay fp32",
    "template": "a PEFT user's cookbook collator puts labels on every non-pad, non-image token; swift on the "
                "answer only",
}


def native_override(factor: str, framework: str, spec: Spec) -> dict:
    """The spec override that puts one factor at `framework`'s native value for this spec."""
    if factor == "accumulation":
        return {"train": {"grad_accum": native_grad_accum(framework, spec.train.batch_size,
                                                          spec.distributed.world_size)}}
    return {section: dict(values) for section, values in NATIVE_FACTORS[factor][framework].items()}


# ---------------------------------------------------------------------------------------------
# The argument-dataclass defaults the values above are read from, per framework, in the releases of
# RELEASES. A default that moves in a new release moves the native cells and the `*-default` profiles:
# `drift` names every field whose installed default is not the table's (a test runs it against the
# installed frameworks), and `profile_key` ties a field to the profile setting it decides, so the table,
# the ablation's factors and the profiles cannot disagree with one another.


@dataclasses.dataclass(frozen=True)
class ArgDefault:
    owner: str  # "module:Class", the dataclass that declares the field
    field: str
    value: object  # the default in RELEASES
    profile_key: str | None = None  # the `<framework>-default` profile's dotted setting it decides ("optim.betas.1")


_HF, _LORA = "transformers:TrainingArguments", "peft:LoraConfig"
_TUNER, _TRAIN = "swift.arguments.tuner_args:TunerArguments", "swift.trainers.arguments:TrainArgumentsMixin"
_LF = "llamafactory.hparams."
ARG_DEFAULTS: dict[str, tuple[ArgDefault, ...]] = {
    "peft": (
        ArgDefault(_HF, "learning_rate", 5e-5, "optim.lr"),
        ArgDefault(_HF, "weight_decay", 0.0, "optim.weight_decay"),
        ArgDefault(_HF, "adam_beta1", 0.9, "optim.betas.0"),
        ArgDefault(_HF, "adam_beta2", 0.999, "optim.betas.1"),
        ArgDefault(_HF, "lr_scheduler_type", "linear", "schedule.type"),
        ArgDefault(_HF, "warmup_steps", 0, "schedule.warmup_steps"),
        ArgDefault(_HF, "per_device_train_batch_size", 8, "train.batch_size"),
        ArgDefault(_HF, "gradient_accumulation_steps", 1, "train.grad_accum"),
        ArgDefault(_HF, "gradient_checkpointing", False, "train.grad_checkpointing"),
        ArgDefault(_HF, "optim", "adamw_torch_fused"),  # numerically adamw_torch (profiles.NOTES)
        ArgDefault(_LORA, "r", 8, "lora.r"),
        ArgDefault(_LORA, "lora_alpha", 8, "lora.alpha"),
        ArgDefault(_LORA, "lora_dropout", 0.0, "lora.dropout"),
        ArgDefault(_LORA, "use_rslora", False),
    ),
    "swift": (
        ArgDefault(_TUNER, "lora_rank", 8, "lora.r"),
        ArgDefault(_TUNER, "lora_alpha", 32.0, "lora.alpha"),
        ArgDefault(_TUNER, "lora_dropout", 0.05, "lora.dropout"),
        ArgDefault(_TUNER, "target_modules", ["all-linear"]),  # with freeze_vit: lm-linear
        ArgDefault(_TUNER, "freeze_vit", True, "train.freeze_vision"),
        ArgDefault(_TRAIN, "weight_decay", 0.1, "optim.weight_decay"),
        ArgDefault(_TRAIN, "adam_beta2", 0.95, "optim.betas.1"),
        ArgDefault(_TRAIN, "lr_scheduler_type", "cosine", "schedule.type"),
        ArgDefault(_TRAIN, "warmup_ratio", 0.0),
        ArgDefault(_TRAIN, "gradient_checkpointing", True, "train.grad_checkpointing"),
        # None: SftArguments.__post_init__ picks 1e-4 for LoRA (the profile's optim.lr), 1e-5 for full
        ArgDefault("swift.arguments.sft_args:SftArguments", "learning_rate", None),
    ),
    # read in the llamafactory-0.9.5 environment (LLaMA-Factory is not in the main one)
    "llamafactory": (
        ArgDefault(_LF + "finetuning_args:LoraArguments", "lora_rank", 8, "lora.r"),
        ArgDefault(_LF + "finetuning_args:LoraArguments", "lora_alpha", None),  # None: 2 x lora_rank (the profile's 16)
        ArgDefault(_LF + "finetuning_args:LoraArguments", "lora_dropout", 0.0, "lora.dropout"),
        ArgDefault(_LF + "finetuning_args:LoraArguments", "lora_target", "all"),  # with freeze_vision_tower: lm-linear
        ArgDefault(_LF + "finetuning_args:FinetuningArguments", "freeze_vision_tower", True, "train.freeze_vision"),
        ArgDefault(_LF + "model_args:ModelArguments", "disable_gradient_checkpointing", False),  # checkpointing on
        ArgDefault(_LF + "data_args:DataArguments", "train_on_prompt", False),  # label_mask answer
        ArgDefault(_LF + "training_args:TrainingArguments", "learning_rate", 5e-5, "optim.lr"),
        ArgDefault(_LF + "training_args:TrainingArguments", "weight_decay", 0.0, "optim.weight_decay"),
        ArgDefault(_LF + "training_args:TrainingArguments", "adam_beta2", 0.999, "optim.betas.1"),
        ArgDefault(_LF + "training_args:TrainingArguments", "lr_scheduler_type", "linear", "schedule.type"),
        ArgDefault(_LF + "training_args:TrainingArguments", "warmup_steps", 0, "schedule.warmup_steps"),
        ArgDefault(_LF + "training_args:TrainingArguments", "per_device_train_batch_size", 8, "train.batch_size"),
        ArgDefault(_LF + "training_args:TrainingArguments", "gradient_accumulation_steps", 1, "train.grad_accum"),
    ),
}


def installed_defaults(framework: str) -> dict[str, object]:
    """`module:Class.field` -> the default the installed release declares; a field it no longer declares is
    left out. Imports the framework: ask for ms-swift's in a process of its own (it patches transformers)."""
    import importlib

    out: dict[str, object] = {}
    for arg in ARG_DEFAULTS[framework]:
        module, _, name = arg.owner.partition(":")
        fields = {f.name: f for f in dataclasses.fields(getattr(importlib.import_module(module), name))}
        if arg.field in fields:
            f = fields[arg.field]
            value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            out[f"{arg.owner}.{arg.field}"] = getattr(value, "value", value)  # an Enum by its value
    return out


def drift(framework: str, installed: dict[str, object]) -> list[str]:
    """One line per field whose installed default is not the table's, naming the field and both values."""
    lines = []
    for arg in ARG_DEFAULTS[framework]:
        key = f"{arg.owner}.{arg.field}"
        if key not in installed:
            lines.append(f"{key}: gone from the installed release (the table has {arg.value!r}, "
                         f"{RELEASES[framework]})")
        elif not _same(installed[key], arg.value):
            lines.append(f"{key}: installed default {installed[key]!r}, the table has {arg.value!r} "
                         f"({RELEASES[framework]})")
    return lines


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-12)
    return (list(a) if isinstance(a, tuple) else a) == (list(b) if isinstance(b, tuple) else b)
