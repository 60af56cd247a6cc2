"""The plain PyTorch reference: peft for LoRA, and a training loop you can read in one screen.

It does, by hand, what transformers.Trainer does for the aligned spec — the same sampler order,
the same loss normalisation, the same AdamW and schedule — so that a framework's cost and
behaviour can be compared with "no framework at all". Native mode is the same loop: a reference has
no defaults of its own to trust.
"""

from __future__ import annotations

import time
from pathlib import Path

from adapters import chat_data, lora_setup, readback, trainer_steps
from adapters.base import Hooks, TrainData, TrainOutcome
from harness import chat, lora_targets
from harness.run_spec import Spec

MAX_GRAD_NORM = 1.0  # what transformers.Trainer clips to by default


class TorchAdapter:
    name = "torch"

    def train(self, spec: Spec, data: TrainData, out_dir: Path, hooks: Hooks) -> TrainOutcome:
        import torch
        from peft import get_peft_model
        from transformers import AutoProcessor, AutoModelForImageTextToText, get_scheduler, set_seed

        if spec.distributed.world_size > 1 or spec.distributed.zero_stage is not None:
            from harness.errors import UserError

            raise UserError("the torch reference adapter runs one process without DeepSpeed")
        t0 = time.perf_counter()
        t, o, s = spec.train, spec.optim, spec.schedule
        device = torch.device(spec.device)
        set_seed(t.seed)  # before loading: LoRA init draws from this state
        processor = AutoProcessor.from_pretrained(str(data.model_dir))
        model = AutoModelForImageTextToText.from_pretrained(str(data.model_dir), dtype=torch.float32)
        unfrozen = lora_setup.full_modules(model, spec)
        targets = lora_targets.resolve_targets(model, spec.lora.targets)
        model = get_peft_model(model, lora_setup.lora_config(spec, targets, unfrozen))
        if t.grad_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        model.to(device).train()
        effective = readback.model_settings(model)
        initial = out_dir / "initial_adapter.safetensors"
        effective["lora.init_sha"] = lora_setup.save_lora_state(model, initial)

        # AdamW as the Trainer builds it: decay on weights, none on biases and norms.
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        no_decay = lambda n: n.endswith(".bias") or "norm" in n.lower()  # noqa: E731
        groups = [{"params": [p for n, p in params if not no_decay(n)], "weight_decay": o.weight_decay},
                  {"params": [p for n, p in params if no_decay(n)], "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
        scheduler = get_scheduler(s.type, optimizer, num_warmup_steps=s.warmup_steps,
                                  num_training_steps=t.steps)
        effective.update(readback.optimizer_settings(optimizer))
        effective["scheduler"] = type(scheduler).__name__

        rows = chat_data.read_jsonl(data.train_jsonl)
        arch = chat_data.chat_arch(model, spec)
        system = chat_data.system_for(spec, arch)
        collate = chat_data.ChatCollator(processor, system, t.label_mask, t.max_length, arch)
        sampler = TrainerOrderSampler(len(rows), t.batch_size, t.data_seed)
        micro_batches = iter(sampler)
        hooks.on_train_begin()
        steps, fingerprints, micro_batch_sizes = [], [], []
        first_step_at = time.perf_counter()
        for step in range(1, t.steps + 1):
            t_step = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            batches = [collate([rows[i] for i in next(micro_batches)]) for _ in range(t.grad_accum)]
            phase = dict.fromkeys(trainer_steps.STEP_PHASES, 0.0)
            phase["data_s"] = time.perf_counter() - t_step
            # per token over the accumulated batch: every micro-batch divides by the step's token count
            n_tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
            step_loss, tokens, samples = 0.0, 0, 0
            max_seq_len = max(int(b["input_ids"].shape[1]) for b in batches)
            image_tokens = sum(int((b["mm_token_type_ids"] == 1).sum()) for b in batches)
            for batch in batches:
                fingerprints.append(trainer_steps.batch_fingerprint(batch))
                micro_batch_sizes.append(int(batch["labels"].shape[0]))
                batch = {k: v.to(device) for k, v in batch.items()}
                t_phase = time.perf_counter()
                if t.loss_norm == "tokens":
                    loss = model(**batch, num_items_in_batch=n_tokens).loss
                else:  # mean of micro-batch means
                    loss = model(**batch).loss / t.grad_accum
                phase["forward_s"] += time.perf_counter() - t_phase
                t_phase = time.perf_counter()
                loss.backward()
                phase["backward_s"] += time.perf_counter() - t_phase
                step_loss += float(loss.detach())
                tokens += int(batch["attention_mask"].sum())
                samples += int(batch["labels"].shape[0])
            grad_norm = torch.nn.utils.clip_grad_norm_([p for _, p in params], MAX_GRAD_NORM)
            t_phase = time.perf_counter()
            optimizer.step()
            phase["optimizer_s"] = time.perf_counter() - t_phase
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            record = {"step": step, "loss": step_loss, "lr": lr, "grad_norm": float(grad_norm), "tokens": tokens,
                      "samples": samples, "max_seq_len": max_seq_len, "image_tokens": image_tokens,
                      "seconds": time.perf_counter() - t_step, **phase}
            steps.append(record)
            hooks.on_step(record)
        t_end = time.perf_counter()
        model.save_pretrained(str(out_dir / "adapter"))
        readback.save_probe(model, processor, rows, chat_data.system_for(spec, arch), out_dir / "probe.pt", arch)
        effective.update(reference_settings(model, scheduler, sampler, collate, steps, fingerprints, micro_batch_sizes,
                                            t.loss_norm))
        return TrainOutcome(adapter_dir=out_dir / "adapter", initial_adapter=initial, steps=steps,
                            effective=effective, setup_s=first_step_at - t0, train_s=t_end - first_step_at,
                            probe=out_dir / "probe.pt")


class TrainerOrderSampler:
    """Indices batch by batch, epoch after epoch, in the Trainer's order.

    transformers' sampler (through accelerate's SeedableRandomSampler) draws
    `randperm(n, generator=manual_seed(data_seed + epoch))` each epoch; the last partial batch is kept.
    `epoch_seeds` records the generator seeds actually used (read back as the data seed).
    """

    def __init__(self, n: int, batch_size: int, data_seed: int):
        self.n, self.batch_size, self.data_seed = n, batch_size, data_seed
        self.epoch_seeds: list[int] = []

    def __iter__(self):
        import torch

        epoch = 0
        while True:
            g = torch.Generator().manual_seed(self.data_seed + epoch)
            self.epoch_seeds.append(g.initial_seed())
            order = torch.randperm(self.n, generator=g).tolist()
            for start in range(0, self.n, self.batch_size):
                yield order[start:start + self.batch_size]
            epoch += 1


PRECISIONS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def schedule_of(scheduler) -> tuple[str, int]:
    """(schedule name, warm-up steps) from a transformers scheduler's live lambda."""
    fn = scheduler.lr_lambdas[0]
    name = getattr(getattr(fn, "func", fn), "__name__", type(scheduler).__name__)
    for schedule in ("cosine_with_restarts", "cosine", "linear", "polynomial", "constant_with_warmup", "constant"):
        if f"_{schedule}_schedule" in name or name.startswith(f"_get_{schedule}"):
            break
    else:
        schedule = name
    warmup = getattr(fn, "keywords", {}).get("num_warmup_steps", 0)
    return ("constant" if schedule == "constant_with_warmup" and not warmup else schedule), int(warmup)


def reference_settings(model, scheduler, sampler: TrainerOrderSampler, collate, steps: list[dict],
                       fingerprints: list[str], micro_batch_sizes: list[int], loss_norm: str) -> dict:
    """The loop's settings read back from the live model, scheduler, sampler, collator and steps."""
    import torch

    schedule, warmup = schedule_of(scheduler)
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    return {
        "grad_accum": len(fingerprints) // max(1, len(steps)), "batch_size": max(micro_batch_sizes, default=0),
        "world_size": 1, "global_batch": steps[0]["samples"] if steps else 0, "max_grad_norm": MAX_GRAD_NORM,
        "lr_schedule": schedule, "warmup_steps": warmup,
        "seed": torch.initial_seed(), "data_seed": sampler.epoch_seeds[0] if sampler.epoch_seeds else None,
        "precision": PRECISIONS.get(dtype, dtype),
        # one process: nothing to average across; the Trainer's default, so the flag never differs for its
        # own sake (the normalisation itself is `loss_norm`)
        "average_tokens_across_devices": True,
        # one micro-batch per step: a mean of means is the token mean (as trainer_steps.loss_norm says)
        "loss_norm": loss_norm if len(fingerprints) > len(steps) else "tokens",
        **trainer_steps.step_fingerprints(steps, fingerprints),
        "system_prompt": "default" if collate.system else "none", "label_mask": collate.label_mask,
        "answer_prefix": chat.answer_prefix_setting(collate.arch),
        "deepspeed_zero_stage": None,
    }
