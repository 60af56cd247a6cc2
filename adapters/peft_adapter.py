"""Native PEFT: transformers.Trainer + peft.get_peft_model, as a PEFT user writes it.

aligned: every knob from the spec, set explicitly. native: what a user who trusts the defaults
writes — `LoraConfig(r, target_modules="all-linear")`, `TrainingArguments(learning_rate default,
max_steps, per_device_train_batch_size, seed)`, the processor's chat template and labels on every
non-pad, non-image token (the Hugging Face cookbook recipe).
"""

from __future__ import annotations

import time
from pathlib import Path

from adapters import chat_data, lora_setup, readback, trainer_steps
from adapters.base import Hooks, TrainData, TrainOutcome
from harness import archs, lora_targets
from harness.run_spec import Spec

def training_args(spec: Spec, out_dir: Path, deepspeed_config: dict | None):
    from transformers import TrainingArguments

    t, o, s = spec.train, spec.optim, spec.schedule
    common_args = dict(
        output_dir=str(out_dir / "trainer"), max_steps=t.steps, per_device_train_batch_size=t.batch_size,
        seed=t.seed, logging_steps=1, save_strategy="no", report_to=[], dataloader_num_workers=0,
        remove_unused_columns=False, disable_tqdm=True,
        # use_cpu would make accelerate skip DeepSpeed; on the CPU the worker hides CUDA instead
        use_cpu=spec.device == "cpu" and deepspeed_config is None,
        deepspeed=deepspeed_config,
    )
    if spec.alignment == "native":
        return TrainingArguments(**common_args)
    return TrainingArguments(
        **common_args, **trainer_steps.PRECISION_ARGS[t.precision],
        gradient_accumulation_steps=t.grad_accum, learning_rate=o.lr, adam_beta1=o.betas[0],
        adam_beta2=o.betas[1], adam_epsilon=o.eps, weight_decay=o.weight_decay, optim="adamw_torch",
        lr_scheduler_type=s.type, warmup_steps=s.warmup_steps, max_grad_norm=1.0,
        data_seed=t.data_seed, gradient_checkpointing=t.grad_checkpointing,
        average_tokens_across_devices=True,
    )


# The same run with transformers + peft alone (plus lorabench's chat collator, which builds the
# Qwen2-VL prompt and label mask): the saved TrainingArguments and LoRA config, nothing else.
PEFT_SNIPPET = """# Reproduce this run with transformers.Trainer + peft (written by lorabench).
import json
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForImageTextToText, AutoProcessor, Trainer, TrainingArguments, set_seed

from adapters.chat_data import ChatCollator, read_jsonl
from harness import archs

out = Path({out!r})
fields = TrainingArguments.__dataclass_fields__
args = TrainingArguments(**{{k: v for k, v in json.loads((out / "training_args.json").read_text()).items()
                            if k in fields and fields[k].init}})
set_seed(args.seed)
processor = AutoProcessor.from_pretrained({model!r})
model = AutoModelForImageTextToText.from_pretrained({model!r}, dtype=torch.float32)
lora = json.loads((out / "adapter" / "adapter_config.json").read_text())
model = get_peft_model(model, LoraConfig(**{{k: v for k, v in lora.items() if k in LoraConfig.__dataclass_fields__}}))
collator = ChatCollator(processor, {system!r}, {label_mask!r}, {max_length!r}, archs.for_model(model))
Trainer(model=model, args=args, train_dataset=read_jsonl(Path({data!r})), data_collator=collator).train()
"""


class PeftAdapter:
    name = "peft"

    def train(self, spec: Spec, data: TrainData, out_dir: Path, hooks: Hooks) -> TrainOutcome:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoProcessor, AutoModelForImageTextToText, Trainer, set_seed

        t0 = time.perf_counter()
        native = spec.alignment == "native"
        set_seed(spec.train.seed)  # before loading: LoRA init draws from this state
        processor = AutoProcessor.from_pretrained(str(data.model_dir))
        # fp32 master weights; fp16/bf16 run as autocast mixed precision through the Trainer
        model = AutoModelForImageTextToText.from_pretrained(str(data.model_dir), dtype=torch.float32)
        arch = archs.for_model(model) if native else chat_data.chat_arch(model, spec)
        if native:
            config = LoraConfig(r=spec.lora.r, target_modules="all-linear", task_type="CAUSAL_LM")
        else:
            unfrozen = lora_setup.full_modules(model, spec)
            targets = lora_targets.resolve_targets(model, spec.lora.targets)
            config = lora_setup.lora_config(spec, targets, unfrozen)
        model = get_peft_model(model, config)
        if spec.train.grad_checkpointing and not native:
            model.enable_input_require_grads()
        rows = chat_data.read_jsonl(data.train_jsonl)
        system = arch.default_system if native else chat_data.system_for(spec, arch)
        label_mask = "all" if native else spec.train.label_mask
        collator = chat_data.ChatCollator(processor, system, label_mask, spec.train.max_length, arch)
        args = training_args(spec, out_dir, str(data.deepspeed_config) if data.deepspeed_config else None)
        trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator)
        effective: dict = {}
        initial = out_dir / "initial_adapter.safetensors"

        def on_begin(kw):
            effective.update(readback.settings_at_train_begin(kw, initial))

        recorder = trainer_steps.StepRecorder(trainer, hooks, on_begin=on_begin,
                                       mean_of_means=spec.train.loss_norm == "mean_of_means" and not native)
        trainer.train()
        t_end = time.perf_counter()
        adapter_dir = out_dir / "adapter"
        # on every rank: under ZeRO-3 the Trainer gathers the partitioned LoRA tensors before rank 0 writes
        trainer.save_model(str(adapter_dir))
        readback.save_probe(trainer.model, processor, rows, system, out_dir / "probe.pt", arch)
        effective.update(trainer_steps.run_settings(trainer.args, recorder, system, label_mask, arch))
        (out_dir / "training_args.json").write_text(trainer.args.to_json_string())
        (out_dir / "reproduce_peft.py").write_text(PEFT_SNIPPET.format(
            model=data.model_dir, data=data.train_jsonl, out=out_dir, system=system, label_mask=label_mask,
            max_length=spec.train.max_length))
        return TrainOutcome(adapter_dir=adapter_dir, initial_adapter=initial, steps=recorder.steps,
                            effective=effective, setup_s=(recorder.first_step_at or t_end) - t0,
                            train_s=t_end - (recorder.first_step_at or t_end),
                            framework_args=out_dir / "training_args.json", command_line=out_dir / "reproduce_peft.py",
                            probe=out_dir / "probe.pt")
