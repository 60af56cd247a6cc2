"""`lorabench plan`'s text: the per-GPU and CPU breakdown of one set-up, and one line per suite cell."""

from __future__ import annotations

from harness.paths import REPO_ROOT
from harness.planner.answers import held_out_band, verdict
from harness.planner.memory import DEFAULT_MAX_LENGTH_GRID, Plan, PlanInput

GPU_LABELS = {
    "frozen_weights": "frozen base weights",
    "lora_weights": "LoRA weights",
    "trained_base_weights": "fully trained weights (ViT + projector)",
    "persistent_params": "ZeRO-3 persistent parameters (whole)",
    "gradients": "gradients",
    "optimizer_states": "optimizer states",
    "zero_buffers": "ZeRO buffers (gathered params, buckets)",
    "activations": "activations",
    "transient": "logits + loss, or a recomputed block",
    "optimizer_step": "ZeRO-3 optimizer step beyond activations",
    "fragmentation": "allocator fragmentation",
    "cuda_context": "CUDA context",
    "total": "total",
}
CPU_LABELS = {
    "offloaded_optimizer": "offloaded optimizer states",
    "offloaded_gradients": "offloaded gradients",
    "offloaded_params": "offloaded parameters",
    "process_baseline": "process baseline",
    "total": "total",
}

# the zero_optimization keys the ZeRO buffer term reads, per stage
ZERO_BUFFER_KEYS = {1: ("reduce_bucket_size",), 2: ("reduce_bucket_size",),
                    3: ("reduce_bucket_size", "stage3_max_live_parameters", "stage3_prefetch_bucket_size",
                        "stage3_param_persistence_threshold")}


def _describe(p: PlanInput, plan: Plan, deepspeed_file: str | None) -> list[str]:
    n = plan.params
    what = ("full fine-tuning" if p.full_finetune else
            f"LoRA r={p.lora_r} on {p.targets} ({n['lora'] / 1e6:.1f} M params)")
    vision = "vision frozen" if p.freeze_vision else f"ViT + projector trained ({n['trained_base'] / 1e6:.0f} M)"
    offload = [x for x, on in (("optimizer", p.offload_optimizer), ("params", p.offload_params)) if on]
    by_targets = ", ".join(f"{name} {count / 1e6:.2f} M" for name, count in n["lora_by_targets"].items())
    return [
        f"{p.shape.name} ({n['total'] / 1e9:.2f} B params): {what}, {vision}",
        f"parameters: vision tower {n['vision'] / 1e6:.1f} M, projector {n['projector'] / 1e6:.1f} M, "
        f"language model {n['language_model'] / 1e6:.1f} M; LoRA r={p.lora_r}: {by_targets}",
        f"ZeRO-{p.zero_stage}, offload: {', '.join(offload) or 'none'}, {p.precision}, "
        f"{p.world_size} GPU{'s' if p.world_size > 1 else ''}",
        f"sequence: {p.max_length} text + {p.image_tokens_per_sample} image tokens = {p.lm_seq_len}, "
        f"micro batch {p.micro_batch_size}, gradient checkpointing {'on' if p.grad_checkpointing else 'off'}, "
        f"{'flash/SDPA' if p.flash_attention else 'eager'} attention",
    ] + _zero_line(p, plan, deepspeed_file)


def _zero_line(p: PlanInput, plan: Plan, deepspeed_file: str | None) -> list[str]:
    zero = plan.details["zero_config"]
    if not p.zero_stage:
        return []
    source = deepspeed_file or f"ms-swift's zero{p.zero_stage} template as runs get it"
    values = ", ".join(f"{key} {zero[key]:,}" for key in ZERO_BUFFER_KEYS[p.zero_stage] if key in zero)
    return [f"DeepSpeed buffers ({source}): {values}"]


def _table(title: str, labels: dict, values_gib: dict) -> list[str]:
    lines = [f"{title:<44}{'GiB':>8}"]
    for key, label in labels.items():
        if key == "total":
            lines.append(f"  {'-' * 50}")
        lines.append(f"  {label:<42}{values_gib[key]:>8.2f}")
    return lines


def cell_line(label: str, targets: str, p: PlanInput, plan: Plan) -> str:
    """One suite cell's set-up and estimate on one line."""
    offload = "+".join(x for x, on in (("optimizer", p.offload_optimizer), ("params", p.offload_params)) if on)
    vision = "" if p.freeze_vision else ", ViT + projector trained"
    vision += ", embeddings trained" if p.train_embeddings else ""
    return (f"{label}: {p.shape.name}, LoRA r={p.lora_r} {targets}{vision}, "
            f"ZeRO-{p.zero_stage}{' offload ' + offload if offload else ''}, {p.precision}, {p.world_size} GPU"
            f"{'s' if p.world_size > 1 else ''}, batch {p.micro_batch_size} x {p.lm_seq_len} tokens "
            f"({p.image_tokens_per_sample} image), checkpointing {'on' if p.grad_checkpointing else 'off'}: "
            f"{held_out_band().text(plan)} per GPU, {verdict(plan)}")


def plan_text(inputs: PlanInput, plan: Plan, deepspeed_file: str | None, header=(), rows=None, check=None) -> str:
    """The breakdown of one set-up as `lorabench plan` prints it, with the --search rows and the
    --deepspeed-check block when given."""
    lines = list(header) + _describe(inputs, plan, deepspeed_file) + [""]
    lines += _table("per GPU", GPU_LABELS, plan.gpu_gib)
    d = plan.details
    lines.append(f"  (activations + transient without checkpointing {d['activations_no_ckpt_gib']:.2f} GiB, "
                 f"with {d['activations_ckpt_gib']:.2f} GiB)")
    lines += [""] + _table(f"CPU RAM (node, {inputs.world_size} process{'es' if inputs.world_size > 1 else ''})",
                           CPU_LABELS, plan.cpu_gib)
    band = held_out_band()
    lines += ["", f"per GPU {band.text(plan)}: the band is the estimate x {band.low:.3f}–{band.high:.3f}, the "
                  "range published measurements the planner was not fitted on fell in (plan --validate-published)",
              verdict(plan)]
    if rows is not None:
        lines += ["", f"largest max_length that fits on {inputs.world_size} x {inputs.gpu_mem_gib:g} GiB "
                      f"(grid {DEFAULT_MAX_LENGTH_GRID[0]}..{DEFAULT_MAX_LENGTH_GRID[-1]}):",
                  f"  {'batch':>5}  {'max_length':>10}  {'total GiB':>9}  {'headroom GiB':>12}"]
        for r in rows:
            if r["max_length"] is None:
                lines.append(f"  {r['batch']:>5}  {'none fits':>10}")
            else:
                lines.append(f"  {r['batch']:>5}  {r['max_length']:>10}  {r['total_gib']:>9.2f}  "
                             f"{r['headroom_gib']:>12.2f}")
    if check is not None:
        lines += ["", f"DeepSpeed cross-check, FULL fine-tuning, model states only "
                      f"(ZeRO-{check['zero_stage']}, {check['world_size']} GPU(s), "
                      f"{check['total_params'] / 1e9:.2f} B params, largest layer "
                      f"{check['largest_layer_params'] / 1e6:.0f} M):"]
        if check["available"]:
            lines += [f"  DeepSpeed cold estimate: {check['deepspeed_gpu_gib']:.2f} GiB per GPU, "
                      f"{check['deepspeed_cpu_gib']:.2f} GiB CPU",
                      f"  ours:                    {check['ours_gpu_gib']:.2f} GiB per GPU, "
                      f"{check['ours_cpu_gib']:.2f} GiB CPU"]
        else:
            lines += [f"  not available: {check['reason']}",
                      f"  ours: {check['ours_gpu_gib']:.2f} GiB per GPU, {check['ours_cpu_gib']:.2f} GiB CPU"]
    return "\n".join(lines)


def whole_run_lines(run, at_max_length: Plan) -> list[str]:
    """The whole-run block of `plan --spec`: the longest sample, the largest image, the estimate at the
    run's longest batch against the one at train.max_length. `run` is a dataset_lengths.WholeRun."""
    band, p, n = held_out_band(), run.peak.inputs, len(run.lengths.samples)
    longest, largest = run.lengths.longest, run.lengths.largest_image

    def sample(s) -> str:
        return (f"{s.id}: {s.tokens} LM tokens = {s.text_tokens} text + {s.image_tokens} image "
                f"(image {s.image_size[0]}x{s.image_size[1]})")
    cut = (f"{run.truncated} of {n} samples are longer than train.max_length {run.max_length}: the collator cuts "
           "their answers (right truncation)" if run.truncated else
           f"no sample is longer than train.max_length {run.max_length}")
    source = run.lengths.source
    if source.is_relative_to(REPO_ROOT):  # the repository's own data sets, as a user would type them
        source = source.relative_to(REPO_ROOT)
    return ["", f"whole run over the data set ({source}, {n} samples the run trains on):",
            f"  longest sample  {sample(longest)}",
            f"  largest image   {sample(largest)}" if largest.id != longest.id else
            "  largest image   the same sample",
            f"  {cut}",
            f"  peak of the run   {band.text(run.peak)} per GPU: batch {p.micro_batch_size} x {p.lm_seq_len} "
            f"tokens ({p.image_tokens_per_sample} image), at sample {run.at.id}",
            f"  at max_length     {band.text(at_max_length)} per GPU: batch {at_max_length.inputs.micro_batch_size} "
            f"x {at_max_length.inputs.lm_seq_len} tokens ({at_max_length.inputs.image_tokens_per_sample} image), "
            "every sample at the cap (the breakdown above)",
            f"  whole run: {verdict(run.peak)}"]
