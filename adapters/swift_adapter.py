"""ms-swift: its own sft pipeline (`SwiftSft`, what `swift sft` runs), its template and trainer.

aligned: every knob set explicitly to the spec (targets as one exact regex, `dataset_shuffle=False`
so the only shuffle is the Trainer sampler's, `system` as the spec says, `fp16=False` because swift
turns fp16 on for fp32 models when a GPU is present). native: only what a swift user passes —
model, dataset, `tuner_type lora`, `target_modules all-linear`, steps, batch size, seed — and swift's
defaults for everything else.

The only hook into swift is a subclass of `SwiftSft` that overrides `train(trainer)` to attach the
step recorder and save the adapter: swift builds model, LoRA, template, optimizer and data exactly
as `swift sft` does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

from adapters import chat_data, lora_setup, readback, trainer_steps
from adapters.base import Hooks, TrainData, TrainOutcome
from harness import archs, lora_targets
from harness.run_spec import Spec

# The one place this adapter looks at the installed ms-swift release. It drives the 4.x API
# (swift.arguments.SftArguments, swift.pipelines, `tuner_type`, `init_weights`); 3.x named these
# swift.llm.TrainArguments / sft_main, `train_type` and `init_lora_weights`, and ran on transformers 4.x.
SUPPORTED_MAJOR = 4


def check_release() -> str:
    """The installed ms-swift's version; a release this adapter cannot drive fails the cell in one line."""
    import importlib.metadata

    from harness.errors import UserError

    version = importlib.metadata.version("ms-swift")
    if not version.startswith(f"{SUPPORTED_MAJOR}."):
        raise UserError(f"ms-swift {version} is not supported: the swift adapter drives the {SUPPORTED_MAJOR}.x API "
                        "(SftArguments with tuner_type / init_weights)")
    return version


SWIFT_INIT = {"kaiming": "true", "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}
DTYPE = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def sft_arguments(spec: Spec, data: TrainData, out_dir: Path, target_names: list[str] | None, deepspeed_config,
                  modules_to_save: list[str] = ()):
    from swift.arguments import SftArguments

    return SftArguments(**sft_kwargs(spec, data, out_dir, target_names, deepspeed_config, modules_to_save))


def sft_kwargs(spec: Spec, data: TrainData, out_dir: Path, target_names: list[str] | None, deepspeed_config,
               modules_to_save: list[str] = ()) -> dict:
    """The arguments lorabench passes to swift's sft pipeline (everything else is swift's default)."""
    from adapters.swift_model import model_type_for

    t, o, s, lora = spec.train, spec.optim, spec.schedule, spec.lora
    base = dict(
        model=str(data.model_dir), dataset=[str(data.train_jsonl)], tuner_type="lora",
        output_dir=str(out_dir / "swift"), add_version=False, check_model=False, report_to=["none"],
        dataloader_num_workers=0, max_steps=t.steps, per_device_train_batch_size=t.batch_size,
        seed=t.seed, logging_steps=1, save_strategy="no", lora_rank=lora.r, load_from_cache_file=False,
        deepspeed=deepspeed_config, dataset_num_proc=1,
    )
    base["model_type"] = model_type_for(data.model_dir)
    if base["model_type"] == archs.for_dir(data.model_dir).swift_template:
        # swift's own type: name its template too (Qwen2-VL's type also fits `qvq`'s, Qwen2.5-VL's `mimo_vl`'s)
        base["template"] = base["model_type"]
    if spec.alignment == "native":
        return dict(**base, target_modules=["all-linear"])
    vision = any(archs.for_dir(data.model_dir).is_vision(n) for n in target_names)
    return dict(
        **base, target_regex=lora_targets.targets_regex(target_names), lora_alpha=lora.alpha,
        lora_dropout=lora.dropout, init_weights=SWIFT_INIT[lora.init], use_rslora=lora.rslora,
        learning_rate=o.lr, adam_beta1=o.betas[0], adam_beta2=o.betas[1], adam_epsilon=o.eps,
        weight_decay=o.weight_decay, optim="adamw_torch", lr_scheduler_type=s.type,
        warmup_steps=s.warmup_steps, max_grad_norm=1.0, gradient_accumulation_steps=t.grad_accum,
        gradient_checkpointing=t.grad_checkpointing, torch_dtype="float32", fp16=t.precision == "fp16",
        bf16=t.precision == "bf16", data_seed=t.data_seed,
        dataset_shuffle=t.data_order == "swift_shuffle", split_dataset_ratio=0.0,
        system="" if t.system_prompt == "none" else None, max_length=t.max_length,
        truncation_strategy="right",  # as the harness collator: cut the answer's tail, never drop a sample
        freeze_vit=not vision and t.freeze_vision, freeze_aligner=True, modules_to_save=list(modules_to_save),
        average_tokens_across_devices=True,
        # swift writes MiniCPM-V's empty thinking block before every answer unless told not to
        add_non_thinking_prefix=t.answer_prefix == "template",
    )


def swift_command_line(kwargs: dict, env: dict | None = None) -> str:
    """`swift sft ...` with the same arguments (and environment): what a user runs to reproduce the
    run outside lorabench."""
    import shlex

    from adapters import swift_model

    parts = [f"{k}={v}" for k, v in (env or {}).items()] + ["swift", "sft"]
    if kwargs.get("model_type") == swift_model.MODEL_TYPE:  # the tiny model is registered from a file
        parts += ["--custom_register_path", str(Path(swift_model.__file__).resolve())]
    for key, value in kwargs.items():
        if value is None or (isinstance(value, (list, tuple)) and not value):
            continue
        if isinstance(value, (list, tuple)):
            parts += [f"--{key}", *map(str, value)]
        elif isinstance(value, bool):
            parts += [f"--{key}", "true" if value else "false"]
        else:
            parts += [f"--{key}", str(value)]
    return shlex.join(parts)


class SwiftAdapter:
    name = "swift"

    def train(self, spec: Spec, data: TrainData, out_dir: Path, hooks: Hooks) -> TrainOutcome:
        from adapters.swift_model import register, template_env

        t0 = time.perf_counter()
        check_release()
        register()
        from swift.pipelines import SwiftSft

        target_names, unfrozen = None, []
        if spec.alignment != "native":
            target_names, unfrozen = lora_setup.meta_targets(spec, data.model_dir)
        ds_config = str(data.deepspeed_config) if data.deepspeed_config else None
        kwargs = sft_kwargs(spec, data, out_dir, target_names, ds_config, unfrozen)
        from swift.arguments import SftArguments

        env = template_env(data.model_dir)
        os.environ.update(env)  # read by swift's template when it is built
        args = SftArguments(**kwargs)
        (out_dir / "swift_sft_command.sh").write_text(swift_command_line(kwargs, env) + "\n")
        native = spec.alignment == "native"
        result: dict = {}
        initial = out_dir / "initial_adapter.safetensors"

        class RecordedSft(SwiftSft):
            def train(self, trainer):
                effective: dict = {}

                def on_begin(kw):
                    effective.update(readback.settings_at_train_begin(kw, initial))

                mean_of_means = spec.train.loss_norm == "mean_of_means" and not native
                recorder = trainer_steps.StepRecorder(trainer, hooks, on_begin=on_begin, mean_of_means=mean_of_means)
                out = super().train(trainer)
                t_end = time.perf_counter()
                # on every rank: under ZeRO-3 the trainer gathers the partitioned LoRA tensors first
                trainer.save_model(str(out_dir / "adapter"))
                meta = self.template.template_meta
                system = meta.default_system if self.args.system is None else self.args.system
                # the answer prefix swift's template wrote, read back from the template
                wrote_prefix = meta.is_thinking and self.template.add_non_thinking_prefix
                arch = dataclasses.replace(archs.for_model(trainer.model),
                                           answer_prefix=meta.non_thinking_prefix if wrote_prefix else "")
                readback.save_probe(trainer.model, self.template.processor, chat_data.read_jsonl(data.train_jsonl),
                                  system or None, out_dir / "probe.pt", arch)
                effective.update(trainer_steps.run_settings(trainer.args, recorder, system, "answer", arch))
                effective["swift.dataset_shuffle"] = self.args.dataset_shuffle
                effective["swift.use_logits_to_keep"] = self.args.use_logits_to_keep
                (out_dir / "sft_args.json").write_text(json.dumps(dataclasses.asdict(self.args), indent=1,
                                                                  default=str, sort_keys=True))
                result.update(steps=recorder.steps, effective=effective, first=recorder.first_step_at, end=t_end)
                return out

        RecordedSft(args).main()
        first = result["first"] or result["end"]
        return TrainOutcome(adapter_dir=out_dir / "adapter", initial_adapter=initial, steps=result["steps"],
                            effective=result["effective"], setup_s=first - t0, train_s=result["end"] - first,
                            framework_args=out_dir / "sft_args.json", command_line=out_dir / "swift_sft_command.sh",
                            probe=out_dir / "probe.pt")

