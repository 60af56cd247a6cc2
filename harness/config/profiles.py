"""Named native profiles: the settings a recipe a user actually follows puts on a LoRA run.

`alignment: native` runs each framework on its library defaults, whatever they are. A profile
instead names one recipe and sets every factor it decides explicitly, through the same aligned
machinery, so that its runs are reproducible and two profiles can be compared factor by factor
(`lorabench parity SPEC --ablate --profiles A,B`). Each value says where it comes from.

- `swift-default`: what `swift sft --tuner_type lora` does with no other flag (ms-swift 4.6.0).
- `peft-default`: the Hugging Face recipe: `TrainingArguments` and `LoraConfig` defaults
  (transformers 5.19, peft 0.20) with `target_modules="all-linear"` and the cookbook collator that
  puts labels on every non-pad, non-image token.
- `llamafactory-default`: what `llamafactory-cli train` does for `stage: sft, finetuning_type: lora`
  with no other training flag (LLaMA-Factory 0.9.5's argument dataclasses on transformers 5.6).
- `minicpmv-official`: the MiniCPM-V repository's own LoRA recipe, finetune/finetune_lora.sh with
  finetune/finetune.py's defaults (OpenBMB/MiniCPM-V, files at the commits in SOURCES), mapped onto
  the native module names of transformers' MiniCPM-V 4.6 (`llm` -> model.language_model, `vpm` ->
  model.vision_tower, `resampler` -> model.merger).

The `swift-default` and `peft-default` values are those of the releases in
harness.config.native_defaults.RELEASES; its ARG_DEFAULTS ties each to the argument-dataclass field it
comes from, and a test reads those fields from the installed releases, so an upgrade that moves a
default fails there, naming the field, before a profile silently stops being the framework's default.

A profile's factors override the spec's; everything else (model, data, steps, seeds, evaluation)
stays the spec's. Values that a CPU run cannot take (fp16 needs a GPU for the MiniCPM-V recipe's
DeepSpeed fp16 optimizer, more than one GPU for its data parallelism) are mapped to their CPU
equivalent and the mapping is stated in NOTES.
"""

from __future__ import annotations

import json
import math

from harness.config.native_defaults import swift_grad_accum

# The factors two named profiles can differ in, each a group of spec keys that move together
# (the profile ablation sets each group to the other profile's values at once).
PROFILE_FACTORS: dict[str, tuple[str, ...]] = {
    "targets": ("lora.targets",), "rank": ("lora.r",), "alpha": ("lora.alpha",), "dropout": ("lora.dropout",),
    "modules trained in full": ("lora.modules_to_save", "train.freeze_vision"),
    "lr": ("optim.lr",), "weight_decay": ("optim.weight_decay",), "betas": ("optim.betas",),
    "schedule": ("schedule.type", "schedule.warmup_steps"),
    "batch x accumulation": ("train.batch_size", "train.grad_accum"), "loss_norm": ("train.loss_norm",),
    "grad_checkpointing": ("train.grad_checkpointing",), "precision": ("train.precision",),
    "data_order": ("train.data_order",), "label_mask": ("train.label_mask",),
    "answer_prefix": ("train.answer_prefix",), "system_prompt": ("train.system_prompt",),
    "deepspeed": ("distributed.zero_stage",),
}


def factor_setting(factor: str, value: object) -> str:
    """A profile factor's setting as a table shows it. The value is the list of the factor's spec keys'
    values (PROFILE_FACTORS); a factor of several keys names each, so
    `[[], true]` reads "modules_to_save none; freeze_vision true"."""
    if value is None:
        return "—"
    keys = PROFILE_FACTORS.get(factor, ())
    if isinstance(value, list) and len(keys) > 1 and len(value) == len(keys):
        return "; ".join(f"{key.rsplit('.', 1)[-1]} {_setting(v)}" for key, v in zip(keys, value))
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    return _setting(value)


def _setting(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_setting(v) for v in value) if value else "none"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


SOURCES = {
    "swift-default": "ms-swift 4.6.0 argument defaults: swift/arguments/tuner_args.py (lora_rank 8, lora_alpha 32, "
                     "lora_dropout 0.05, target_modules all-linear, freeze_vit/freeze_aligner true), "
                     "swift/arguments/sft_args.py + trainers/arguments.py (learning_rate 1e-4 for LoRA, "
                     "weight_decay 0.1, adam_beta2 0.95, cosine, no warm-up, per-device batch 1, gradient "
                     "accumulation ceil(16 / (batch x processes)), gradient checkpointing on, dataset shuffle)",
    "peft-default": "transformers 5.19 TrainingArguments defaults (learning_rate 5e-5, weight_decay 0, betas "
                    "0.9/0.999, linear schedule, no warm-up, per-device batch 8, accumulation 1, no gradient "
                    "checkpointing) + peft 0.20 LoraConfig defaults (r 8, lora_alpha 8, lora_dropout 0) with "
                    "target_modules='all-linear' (every Linear but the output layer, vision tower included); "
                    "labels on every non-pad, non-image token (TRL's VLM fine-tuning guide, docs/source/"
                    "training_vlm_sft.md @ 01456e2e)",
    "llamafactory-default": "LLaMA-Factory 0.9.5 argument defaults: src/llamafactory/hparams/finetuning_args.py "
                            "(lora_rank 8, lora_alpha None = 2 x rank, lora_dropout 0, lora_target all = every "
                            "Linear of the language model with freeze_vision_tower and freeze_multi_modal_projector "
                            "true), hparams/model_args.py (disable_gradient_checkpointing false: checkpointing on), "
                            "hparams/data_args.py (train_on_prompt false: the answer only, cutoff_len 2048), "
                            "the qwen2_vl template of data/template.py (system 'You are a helpful assistant.'), "
                            "transformers 5.6 TrainingArguments underneath (learning_rate 5e-5, weight_decay 0, "
                            "betas 0.9/0.999, linear, no warm-up, per-device batch 8, accumulation 1); "
                            "train/sft/trainer.py sets model_accepts_loss_kwargs=False for every model with a "
                            "processor: the mean of micro-batch means",
    "minicpmv-official": "OpenBMB/MiniCPM-V finetune/finetune_lora.sh @ ead51cde2ac30c1dcd8a65efedfba9dc6272cb22 "
                         "(lr 1e-6, weight_decay 0.1, adam_beta2 0.95, cosine, warmup_ratio 0.01, fp16, per-device "
                         "batch 1 x accumulation 1 on 8 GPUs, gradient checkpointing, ds_config_zero2.json, "
                         "tune_vision true, tune_llm false, target regex "
                         r"llm\..*layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)) + finetune/finetune.py "
                         "@ 53c0174797d9b6505a91122ee5f59fb20a4cabc9 (lora_r 64, lora_alpha 64, lora_dropout 0.05, "
                         "modules_to_save embed_tokens + resampler + vpm) + finetune/dataset.py @ 53c01747 "
                         "(labels on the assistant turns only, no system prompt added, no thinking block)",
}

# Each profile: spec overrides, as the recipe sets them. `warmup_ratio` becomes schedule.warmup_steps
# = ceil(ratio x train.steps), as transformers resolves a warm-up ratio.
PROFILES: dict[str, dict] = {
    "swift-default": {
        "lora": {"targets": "lm-linear", "r": 8, "alpha": 32, "dropout": 0.05, "modules_to_save": []},
        "optim": {"lr": 1e-4, "betas": [0.9, 0.95], "weight_decay": 0.1},
        "schedule": {"type": "cosine", "warmup_steps": 0},
        "train": {"batch_size": 1, "grad_accum": 16, "loss_norm": "tokens", "grad_checkpointing": True,
                  "precision": "fp32", "freeze_vision": True, "data_order": "swift_shuffle",
                  "system_prompt": "default", "label_mask": "answer", "answer_prefix": "template"},
        "distributed": {"zero_stage": None},
    },
    "peft-default": {
        "lora": {"targets": "every-linear", "r": 8, "alpha": 8, "dropout": 0.0, "modules_to_save": []},
        "optim": {"lr": 5e-5, "betas": [0.9, 0.999], "weight_decay": 0.0},
        "schedule": {"type": "linear", "warmup_steps": 0},
        "train": {"batch_size": 8, "grad_accum": 1, "loss_norm": "tokens", "grad_checkpointing": False,
                  "precision": "fp32", "freeze_vision": True, "data_order": "sampler",
                  "system_prompt": "default", "label_mask": "all", "answer_prefix": "template"},
        "distributed": {"zero_stage": None},
    },
    "llamafactory-default": {
        "lora": {"targets": "lm-linear", "r": 8, "alpha": 16, "dropout": 0.0, "modules_to_save": []},
        "optim": {"lr": 5e-5, "betas": [0.9, 0.999], "weight_decay": 0.0},
        "schedule": {"type": "linear", "warmup_steps": 0},
        "train": {"batch_size": 8, "grad_accum": 1, "loss_norm": "mean_of_means", "grad_checkpointing": True,
                  "precision": "fp32", "freeze_vision": True, "data_order": "sampler",
                  "system_prompt": "default", "label_mask": "answer", "answer_prefix": "template"},
        "distributed": {"zero_stage": None},
    },
    "minicpmv-official": {
        "lora": {"targets": "lm-attention", "r": 64, "alpha": 64, "dropout": 0.05,
                 "modules_to_save": ["embed_tokens", "model.merger"]},
        "optim": {"lr": 1e-6, "betas": [0.9, 0.95], "weight_decay": 0.1},
        "schedule": {"type": "cosine", "warmup_ratio": 0.01},
        # 8 GPUs x batch 1, each GPU's loss a mean over its own tokens, averaged by DDP: on one process,
        # 8 micro-batches of 1 with the mean of their means
        "train": {"batch_size": 1, "grad_accum": 8, "loss_norm": "mean_of_means", "grad_checkpointing": True,
                  "precision": "fp16", "freeze_vision": False, "data_order": "sampler",
                  "system_prompt": "none", "label_mask": "answer", "answer_prefix": "none"},
        "distributed": {"zero_stage": 2},
    },
}
# The framework each recipe is written for (what `--ablate --profiles` runs it on).
HOME_FRAMEWORK = {"swift-default": "swift", "peft-default": "peft", "llamafactory-default": "llamafactory",
                  "minicpmv-official": "peft"}
NOTES = {
    "minicpmv-official": [
        "8 GPUs x batch 1 becomes batch 1 x accumulation 8 with the mean of micro-batch means (DDP averages "
        "the GPUs' per-token means)",
        "the recipe's DeepSpeed AdamW (from ds_config_zero2.json) runs as torch AdamW with the same betas, eps "
        "and weight decay",
        "fp16 on the CPU: the Trainer's fp16 autocast without DeepSpeed's loss scaler (CPU runs drop ZeRO-2 "
        "there: DeepSpeed's fp16 optimizer needs a GPU)",
        "the official collator also supervises the newline after `assistant` and one extra end-of-text target; "
        "here the answer, <|im_end|> and newline (the other frameworks' answer mask)",
        "target regex llm\\..*layers\\.\\d+\\.self_attn\\.(q|k|v|o)_proj = the language model's attention "
        "projections (`lm-attention`); in a hybrid Qwen3.5 text model only the full-attention layers have them",
    ],
    "swift-default": ["accumulation ceil(16 / (batch x processes)): 16 on one process"],
    "peft-default": ["adamw_torch_fused (the Trainer's default optimizer) is numerically adamw_torch"],
    "llamafactory-default": [
        "adamw_torch_fused (the Trainer's default optimizer) is numerically adamw_torch",
        "precision fp32 on the CPU; on a GPU LLaMA-Factory computes an fp32 checkpoint in fp16 unless bf16 or fp16 "
        "is set (hparams/parser.py and model/patcher.py: infer_optim_dtype)",
        "the mean of micro-batch means is the token mean while a step is one micro-batch on one process "
        "(accumulation 1 here)",
    ],
}


def apply_profile(spec: dict, merge) -> dict:
    """`spec` with its profile's factors set (a no-op for `aligned` and `native`)."""
    name = spec["alignment"]
    if name not in PROFILES:
        return spec
    settings = {section: dict(values) for section, values in PROFILES[name].items()}
    schedule = settings.get("schedule", {})
    if "warmup_ratio" in schedule:
        ratio = schedule.pop("warmup_ratio")
        schedule["warmup_steps"] = math.ceil(ratio * spec["train"]["steps"])
    train = settings.get("train", {})
    if name == "swift-default":  # swift's rule, for the spec's number of processes
        train["grad_accum"] = swift_grad_accum(train["batch_size"], spec["distributed"]["world_size"])
    zero = settings.get("distributed", {}).get("zero_stage")
    if spec["device"] == "cpu" and zero and train.get("precision") == "fp16":
        settings["distributed"] = {**settings["distributed"], "zero_stage": None}
    return merge(spec, settings, source=f"profile {name}")
