"""LLaMA-Factory: its own training pipeline (`run_exp`, what `llamafactory-cli train` runs), its template
for the model and its trainer, in the environment of its release (harness/envs/llamafactory-0.9.5.yaml:
LLaMA-Factory 0.9.5 pins transformers<=5.6.0 and peft<=0.18.1).

The adapter writes what a LLaMA-Factory user writes: a `dataset_info.json` that registers the run's
training rows (ShareGPT format, `<image>` in the user turn) and the training arguments, saved as a YAML
that `llamafactory-cli train` runs unchanged. aligned: every knob the spec sets is passed explicitly
(LoRA targets as the exact module names, optimizer, schedule, accumulation, system prompt as
`default_system`, gradient checkpointing, precision). native: what a LLaMA-Factory user passes —
model, dataset, `template`, `stage sft`, `finetuning_type lora`, `lora_target all`, steps, batch size,
seed — and LLaMA-Factory's defaults for everything else.

The only hook into LLaMA-Factory is a subclass of its SFT trainer, put where its `run_sft` looks the
class up, which attaches the step recorder and, after `train`, saves the adapter and the probe from the
live model: LLaMA-Factory builds tokenizer, template, data, model, LoRA, optimizer and schedule itself.
What it cannot be told is recorded, not patched: it sets `model_accepts_loss_kwargs = False` for every
model with a processor, so under accumulation (or several processes) its loss is the mean of the
micro-batch means (effective `loss_norm`).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import time
from pathlib import Path

from adapters import chat_data, lora_setup, readback, trainer_steps
from adapters.base import Hooks, TrainData, TrainOutcome
from harness import archs
from harness.errors import UserError
from harness.run_spec import Spec

# The one place this adapter looks at the installed release: it drives 0.9.x (`run_exp(args, callbacks)`,
# `llamafactory.train.sft.workflow.CustomSeq2SeqTrainer`, ShareGPT `dataset_info.json`).
SUPPORTED_SERIES = "0.9."
DATASET_NAME = "lorabench_train"


def check_release() -> str:
    """The installed LLaMA-Factory's version; a release this adapter cannot drive fails the cell in one line."""
    try:
        version = importlib.metadata.version("llamafactory")
    except importlib.metadata.PackageNotFoundError:
        raise UserError("framework llamafactory needs LLaMA-Factory installed: give the cell "
                        "env: llamafactory-0.9.5 (lorabench env create llamafactory-0.9.5)") from None
    if not version.startswith(SUPPORTED_SERIES):
        raise UserError(f"llamafactory {version} is not supported: the adapter drives the {SUPPORTED_SERIES}x API "
                        "(run_exp with callbacks, CustomSeq2SeqTrainer)")
    return version


def template_for(model_dir: Path) -> str:
    arch = archs.for_dir(model_dir)
    if not arch.llamafactory_template:
        raise UserError(f"framework llamafactory: no LLaMA-Factory template for the {arch.name} family in this "
                        "release set (supported: " + ", ".join(a.name for a in archs.ARCHS if a.llamafactory_template)
                        + ")")
    return arch.llamafactory_template


def dataset_dir(data: TrainData, out_dir: Path) -> Path:
    """A dataset_info.json registering the run's training rows as LLaMA-Factory reads ShareGPT data."""
    where = out_dir / "llamafactory_data"
    where.mkdir(parents=True, exist_ok=True)
    info = {DATASET_NAME: {
        "file_name": str(data.train_jsonl), "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    }}
    (where / "dataset_info.json").write_text(json.dumps(info, indent=1))
    return where


def train_args(spec: Spec, data: TrainData, out_dir: Path, target_names: list[str] | None) -> dict:
    """The arguments lorabench passes to LLaMA-Factory's `run_exp` (everything else is its default)."""
    t, o, s, lora = spec.train, spec.optim, spec.schedule, spec.lora
    base = dict(
        model_name_or_path=str(data.model_dir), stage="sft", do_train=True, finetuning_type="lora",
        dataset=DATASET_NAME, dataset_dir=str(dataset_dir(data, out_dir)), template=template_for(data.model_dir),
        output_dir=str(out_dir / "llamafactory"), overwrite_output_dir=True, overwrite_cache=True,
        max_steps=t.steps, per_device_train_batch_size=t.batch_size, seed=t.seed, logging_steps=1,
        save_strategy="no", report_to="none", dataloader_num_workers=0, plot_loss=False,
        # use_cpu would make accelerate skip DeepSpeed; on the CPU the worker hides CUDA instead
        use_cpu=spec.device == "cpu" and data.deepspeed_config is None,
    )
    if data.deepspeed_config:
        base["deepspeed"] = str(data.deepspeed_config)
    if spec.alignment == "native":
        return dict(**base, lora_target="all")
    if lora.init != "kaiming":
        raise UserError(f"framework llamafactory: lora.init {lora.init!r} has no LLaMA-Factory option in "
                        "aligned form (it initialises LoRA as PEFT's default, kaiming, or with pissa_init)")
    if lora.modules_to_save or not t.freeze_vision:
        raise UserError("framework llamafactory: modules trained in full (lora.modules_to_save, "
                        "train.freeze_vision false) are not driven by this adapter yet")
    vision = any(archs.for_dir(data.model_dir).is_vision(n) for n in target_names)
    return dict(
        **base, **trainer_steps.PRECISION_ARGS[t.precision],
        lora_target=",".join(target_names), lora_rank=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        use_rslora=lora.rslora, freeze_vision_tower=not vision, freeze_multi_modal_projector=True,
        learning_rate=o.lr, adam_beta1=o.betas[0], adam_beta2=o.betas[1], adam_epsilon=o.eps,
        weight_decay=o.weight_decay, optim="adamw_torch", lr_scheduler_type=s.type, warmup_steps=s.warmup_steps,
        max_grad_norm=1.0, gradient_accumulation_steps=t.grad_accum, data_seed=t.data_seed,
        disable_gradient_checkpointing=not t.grad_checkpointing, cutoff_len=t.max_length,
        # "" drops the system turn, as swift's `--system ''`; None keeps the template's default
        default_system="" if t.system_prompt == "none" else None,
        train_on_prompt=t.label_mask == "all",
    )


def command_line(args: dict, yaml_path: Path) -> str:
    """`llamafactory-cli train <yaml>`: what a user runs to reproduce the run outside lorabench."""
    import yaml

    yaml_path.write_text(yaml.safe_dump({k: v for k, v in args.items() if v is not None}, sort_keys=False))
    return f"llamafactory-cli train {yaml_path}"


class LlamaFactoryAdapter:
    name = "llamafactory"

    def train(self, spec: Spec, data: TrainData, out_dir: Path, hooks: Hooks) -> TrainOutcome:
        t0 = time.perf_counter()
        version = check_release()
        native = spec.alignment == "native"
        targets = None if native else lora_setup.meta_targets(spec, data.model_dir)[0]
        args = train_args(spec, data, out_dir, targets)
        (out_dir / "llamafactory_train.sh").write_text(
            command_line(args, out_dir / "llamafactory_train.yaml") + "\n")
        from llamafactory.hparams import get_train_args
        from llamafactory.train.sft import workflow
        from llamafactory.train.tuner import run_exp

        # LLaMA-Factory's own resolution of the same dict, as run_exp does it: every argument it trains with
        resolved = {type(group).__name__: _fields(group) for group in get_train_args(dict(args))}
        (out_dir / "llamafactory_args.json").write_text(json.dumps(resolved, indent=1, sort_keys=True, default=str))

        result: dict = {}
        initial = out_dir / "initial_adapter.safetensors"
        rows = chat_data.read_jsonl(data.train_jsonl)

        class RecordedTrainer(workflow.CustomSeq2SeqTrainer):
            def __init__(self, *a, processor=None, **kw):
                super().__init__(*a, processor=processor, **kw)
                self._lorabench_processor = processor
                self._lorabench_effective: dict = {}

                def on_begin(kw):
                    self._lorabench_effective.update(readback.settings_at_train_begin(kw, initial))

                self._lorabench_recorder = trainer_steps.StepRecorder(self, hooks, on_begin=on_begin)

            def train(self, *a, **kw):
                out = super().train(*a, **kw)
                t_end = time.perf_counter()
                # on every rank: under ZeRO-3 the trainer gathers the partitioned LoRA tensors first
                self.save_model(str(out_dir / "adapter"))
                template = self.data_collator.template
                system = template.default_system or None
                arch = archs.for_model(self.model)
                data_args = resolved["DataArguments"]
                label_mask = "all" if data_args["train_on_prompt"] else "answer"
                readback.save_probe(self.model, self._lorabench_processor, rows, system, out_dir / "probe.pt", arch)
                effective = self._lorabench_effective
                recorder = self._lorabench_recorder
                effective.update(trainer_steps.run_settings(self.args, recorder, system, label_mask, arch))
                effective["llamafactory.release"] = version
                effective["llamafactory.template"] = data_args["template"]
                effective["llamafactory.disable_shuffling"] = self.finetuning_args.disable_shuffling
                effective["llamafactory.cutoff_len"] = data_args["cutoff_len"]
                effective["llamafactory.image_max_pixels"] = resolved["ModelArguments"]["image_max_pixels"]
                result.update(steps=recorder.steps, effective=effective, first=recorder.first_step_at, end=t_end)
                return out

        original, workflow.CustomSeq2SeqTrainer = workflow.CustomSeq2SeqTrainer, RecordedTrainer  # run_sft's class
        try:
            run_exp(args=dict(args))
        finally:
            workflow.CustomSeq2SeqTrainer = original
        first = result["first"] or result["end"]
        return TrainOutcome(adapter_dir=out_dir / "adapter", initial_adapter=initial, steps=result["steps"],
                            effective=result["effective"], setup_s=first - t0, train_s=result["end"] - first,
                            framework_args=out_dir / "llamafactory_args.json",
                            command_line=out_dir / "llamafactory_train.sh", probe=out_dir / "probe.pt")



def _fields(group) -> dict:
    if hasattr(group, "to_dict"):  # TrainingArguments: its own serialisation (enums as values, tokens hidden)
        return group.to_dict()
    return {f.name: getattr(group, f.name) for f in dataclasses.fields(group)}
