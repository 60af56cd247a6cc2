"""A training loop's step records and read-back settings, shared by the adapters.

- `StepRecorder`, a Trainer callback + training_step wrapper that logs the exact per-step loss
  (the Trainer rounds its logged loss to 4 digits: useless for a 1e-5 parity check) and where each
  step's time went (STEP_PHASES);
- what a micro-batch trained on (`batch_fingerprint`) and the global loss over ranks;
- the loop's settings read back from the Trainer's live arguments (`run_settings`).
"""

from __future__ import annotations

import hashlib
import json
import time

from harness import archs
from harness.chat import answer_prefix_setting


def batch_fingerprint(inputs) -> str:
    """What a micro-batch trains on: hash of its supervised token ids (order-sensitive)."""
    labels = inputs["labels"]
    h = hashlib.sha256()
    for row in labels.tolist():
        h.update(json.dumps([t for t in row if t != -100]).encode())
    return h.hexdigest()[:12]


def global_loss(rank_loss: float) -> float:
    """The step's loss over all processes: the mean of the ranks' losses.

    With `average_tokens_across_devices` each rank's loss is its token-loss sum over the global token
    count, times the world size (so that DDP's gradient mean comes out right); the mean over ranks is
    then the loss of the whole global batch, what one process with accumulation reports. Called on
    every rank (a collective); one process returns its own loss unchanged.
    """
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rank_loss
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    total = torch.tensor([rank_loss], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return float(total.item()) / dist.get_world_size()


# TrainingArguments flags per spec precision (fp32 master weights; fp16/bf16 as the Trainer's autocast)
PRECISION_ARGS = {"fp32": {}, "fp16": {"fp16": True}, "bf16": {"bf16": True}}

# Where a step's time goes, in every adapter's step records: fetching and collating or encoding the
# micro-batches, the forward passes (with the loss), the backward passes, and the optimizer step
# (gradient clipping, the scheduler and logging are the rest of `seconds`).
STEP_PHASES = ("data_s", "forward_s", "backward_s", "optimizer_s")


class StepRecorder:
    """Exact per-step loss, lr, grad norm, tokens, time and its phases for any transformers Trainer.

    Wraps `trainer.training_step` (sums the accumulation-scaled micro-batch losses, exactly what the
    Trainer adds to its running loss), `compute_loss` (the forward) and `get_batch_samples` (the data),
    and listens to the Trainer's callbacks for step boundaries and the optimizer step.
    """

    def __init__(self, trainer, hooks, on_begin=None, mean_of_means: bool = False):
        from transformers import TrainerCallback

        self.steps: list[dict] = []
        self.fingerprints: list[str] = []
        self._loss = 0.0
        self._tokens = 0
        self._samples = 0
        self._padded_max = 0  # largest padded sequence length of the step (drives peak memory)
        self._image_tokens = 0
        self._t0 = None
        self.first_step_at = None
        self.hooks = hooks
        self.trainer = trainer
        self.mean_of_means = mean_of_means
        self._phase = dict.fromkeys(STEP_PHASES, 0.0)
        recorder = self
        original = trainer.training_step
        original_forward = trainer.compute_loss
        original_fetch = trainer.get_batch_samples

        def get_batch_samples(*args, **kwargs):
            # The Trainer fetches (and collates or template-encodes) a step's micro-batches before its
            # step-begin callback: timed here so a step's seconds include its data, as the torch loop's do.
            t = time.perf_counter()
            out = original_fetch(*args, **kwargs)
            recorder._phase["data_s"] += time.perf_counter() - t
            return out

        def compute_loss(*args, **kwargs):
            t = time.perf_counter()
            out = original_forward(*args, **kwargs)
            recorder._phase["forward_s"] += time.perf_counter() - t
            return out

        def training_step(model, inputs, num_items_in_batch=None):
            if mean_of_means:  # no global token count: each micro-batch is a mean, divided by GA
                num_items_in_batch = None
            t = time.perf_counter()
            forward_before = recorder._phase["forward_s"]
            loss = original(model, inputs, num_items_in_batch)
            # what training_step spent outside the forward: the backward (and the loss scaling around it)
            recorder._phase["backward_s"] += (time.perf_counter() - t) - (recorder._phase["forward_s"] - forward_before)
            recorder._loss += float(loss.detach().float())
            recorder._tokens += int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else 0
            recorder._samples += int(inputs["labels"].shape[0])
            recorder._note_shape(inputs)
            recorder.fingerprints.append(batch_fingerprint(inputs))
            return loss

        trainer.training_step = training_step
        trainer.compute_loss = compute_loss
        trainer.get_batch_samples = get_batch_samples

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                if on_begin:
                    on_begin(kw)
                hooks.on_train_begin()

            def on_step_begin(self, args, state, control, optimizer=None, **kw):
                recorder._t0 = time.perf_counter()
                if recorder.first_step_at is None:
                    recorder.first_step_at = recorder._t0
                recorder._lr = optimizer.param_groups[0]["lr"] if optimizer is not None else None

            def on_pre_optimizer_step(self, args, state, control, **kw):
                recorder._t_opt = time.perf_counter()

            def on_optimizer_step(self, args, state, control, **kw):
                recorder._phase["optimizer_s"] += time.perf_counter() - recorder._t_opt

            def on_log(self, args, state, control, logs=None, **kw):
                if logs and "grad_norm" in logs and recorder.steps and recorder.steps[-1]["grad_norm"] is None:
                    recorder.steps[-1]["grad_norm"] = float(logs["grad_norm"])

            def on_step_end(self, args, state, control, **kw):
                rec = {"step": state.global_step, "loss": global_loss(recorder._loss), "lr": recorder._lr,
                       "grad_norm": None,
                       "tokens": recorder._tokens, "samples": recorder._samples,
                       "max_seq_len": recorder._padded_max, "image_tokens": recorder._image_tokens,
                       "seconds": time.perf_counter() - recorder._t0 + recorder._phase["data_s"],
                       **recorder._phase}
                recorder.steps.append(rec)
                recorder._phase = dict.fromkeys(STEP_PHASES, 0.0)
                recorder._loss, recorder._tokens, recorder._samples = 0.0, 0, 0
                recorder._padded_max, recorder._image_tokens = 0, 0
                hooks.on_step(rec)

        self.callback = _Callback()
        trainer.add_callback(self.callback)

    def _note_shape(self, inputs) -> None:
        ids = inputs.get("input_ids")
        if ids is not None:
            self._padded_max = max(self._padded_max, int(ids.shape[-1]))
            if "mm_token_type_ids" in inputs:
                self._image_tokens += int((inputs["mm_token_type_ids"] == 1).sum())



def step_fingerprints(steps: list[dict], batch_fingerprints: list[str]) -> dict:
    """Short hashes of the LR each step used and of the supervised tokens, micro-batch by micro-batch."""
    return {
        "lr_per_step_sha": hashlib.sha256(json.dumps([round(s["lr"], 12) for s in steps]).encode()).hexdigest()[:16],
        "data_order_sha": hashlib.sha256(",".join(batch_fingerprints).encode()).hexdigest()[:16],
    }


def loss_norm(recorder: StepRecorder) -> str:
    """How a step's loss is normalised, read from the live trainer: "tokens" (the summed token losses
    over the step's supervised tokens, accumulation and processes included) or "mean_of_means" (each
    micro-batch's own mean, averaged). A trainer that does not hand the step's token count to the
    loss (`model_accepts_loss_kwargs` false: LLaMA-Factory sets it for every model with a processor;
    or the spec's mean_of_means) takes micro-batch means; with one micro-batch per step the two agree."""
    trainer, args = recorder.trainer, recorder.trainer.args
    per_micro = recorder.mean_of_means or not getattr(trainer, "model_accepts_loss_kwargs", True)
    if args.world_size > 1 and not args.average_tokens_across_devices:
        per_micro = True  # each process its own mean, DDP then averages the processes
    micro_batches = args.gradient_accumulation_steps * args.world_size
    return "mean_of_means" if per_micro and micro_batches > 1 else "tokens"


def run_settings(args, recorder: StepRecorder, system, label_mask, arch: archs.Arch = archs.DEFAULT) -> dict:
    """Settings of the loop itself, from the Trainer's live arguments and the recorded steps."""
    return {
        "grad_accum": args.gradient_accumulation_steps,
        "batch_size": args.per_device_train_batch_size,
        "world_size": args.world_size,
        "global_batch": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        "max_grad_norm": args.max_grad_norm,
        "lr_schedule": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        "warmup_steps": args.warmup_steps,
        "seed": args.seed,
        "data_seed": args.data_seed,
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "average_tokens_across_devices": args.average_tokens_across_devices,
        "loss_norm": loss_norm(recorder),
        **step_fingerprints(recorder.steps, recorder.fingerprints),
        "system_prompt": "default" if system else "none",
        "label_mask": label_mask,
        "answer_prefix": answer_prefix_setting(arch),
        "deepspeed_zero_stage": (args.hf_deepspeed_config.config.get("zero_optimization", {}).get("stage")
                                 if getattr(args, "hf_deepspeed_config", None) else None),
    }
