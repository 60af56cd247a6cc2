"""`lorabench plan`: per-GPU memory of a LoRA fine-tuning set-up, and whether it fits.

    lorabench plan --model minicpm-v-2_6 --gpus 3 --gpu-mem 24 --zero 3 --offload-optimizer \
        --offload-params --precision bf16 --batch 1 --max-length 2048 --search

Prints the breakdown per GPU and for the node's CPU RAM, the verdict line, and with --search the
largest max_length that fits for each batch size. --json prints the same as one JSON object.
--deepspeed-config FILE plans for the user's own DeepSpeed JSON (stage, offloads, buffer sizes).
Formulas and assumptions: docs/plan.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness import planner
from harness.errors import UserError

GPU_LABELS = {
    "frozen_weights": "frozen base weights",
    "lora_weights": "LoRA weights",
    "trained_base_weights": "fully trained weights (ViT + projector)",
    "gradients": "gradients",
    "optimizer_states": "optimizer states",
    "zero_buffers": "ZeRO buffers (gathered params, buckets)",
    "activations": "activations",
    "transient": "logits + loss, or a recomputed block",
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


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--validate", metavar="RESULTS",
                        help="compare estimates with the peak memory measured by the runs in RESULTS "
                             "(e.g. results/runs/memory) instead of planning")
    parser.add_argument("--model",
                        help=f"{' | '.join(planner.BUILTIN_SHAPES)} | path to a shape JSON | "
                             "path to a Hugging Face Qwen2-VL model directory (its config.json)")
    parser.add_argument("--gpus", type=int, default=1, help="number of GPUs (world size)")
    parser.add_argument("--gpu-mem", type=float, default=24.0, help="memory per GPU, GiB")
    parser.add_argument("--zero", type=int, choices=(0, 1, 2, 3), default=None,
                        help="DeepSpeed ZeRO stage (default 0; its buffers are ms-swift's templates)")
    parser.add_argument("--offload-optimizer", action="store_true",
                        help="optimizer states (and fp32 master weights) in CPU RAM")
    parser.add_argument("--offload-params", action="store_true", help="parameters in CPU RAM (ZeRO-3)")
    parser.add_argument("--deepspeed-config", metavar="FILE",
                        help="your own DeepSpeed JSON: ZeRO stage, offloads, precision and buffer sizes "
                             "come from it (\"auto\" resolved the Hugging Face way); replaces --zero "
                             "and --offload-*")
    parser.add_argument("--precision", choices=tuple(planner.PRECISIONS), default=None,
                        help="default bf16, or what --deepspeed-config enables")
    parser.add_argument("--batch", type=int, default=1, help="micro batch size per GPU")
    parser.add_argument("--max-length", type=int, default=2048, help="text tokens per sample")
    parser.add_argument("--image-tokens", type=int, default=None,
                        help="LM tokens from images per sample (default: the model's)")
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lora-dropout", type=float, default=0.05)
    parser.add_argument("--targets", choices=list(planner.SPEC_TARGETS), default="lm-linear",
                        help="lm-linear: LM linears (ms-swift's all-linear); lm+vision-linear: plus ViT blocks; "
                             "every-linear: plus the projector (PEFT's all-linear); old names still read")
    parser.add_argument("--freeze-vision", action=argparse.BooleanOptionalAction, default=True,
                        help="--no-freeze-vision trains the ViT and projector in full")
    parser.add_argument("--grad-ckpt", action=argparse.BooleanOptionalAction, default=True,
                        help="gradient checkpointing")
    parser.add_argument("--flash-attn", action=argparse.BooleanOptionalAction, default=True,
                        help="FlashAttention/SDPA (no stored s x s scores); --no-flash-attn: eager")
    parser.add_argument("--search", action="store_true",
                        help="largest max_length that fits, per batch size")
    parser.add_argument("--deepspeed-check", action="store_true",
                        help="DeepSpeed's own estimate next to ours (full fine-tuning, model states)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def resolve_shape(model: str) -> planner.Shape:
    """A built-in name, a shape JSON file or a Hugging Face model directory / config.json."""
    if model in planner.BUILTIN_SHAPES:
        return planner.builtin_shape(model)
    path = Path(model)
    if path.is_dir() or path.name == "config.json":
        return planner.shape_from_hf_config(path)
    if path.suffix == ".json" and path.exists():
        return planner.load_shape(path)
    return planner.builtin_shape(model)  # raises UserError listing the valid names


def deepspeed_settings(args, shape: planner.Shape) -> dict:
    """zero_stage, offloads, precision and zero_config from the flags or from --deepspeed-config."""
    if not args.deepspeed_config:
        return {"zero_stage": args.zero or 0, "offload_optimizer": args.offload_optimizer,
                "offload_params": args.offload_params, "precision": args.precision or "bf16"}
    given = [flag for flag, on in (("--zero", args.zero is not None), ("--offload-optimizer", args.offload_optimizer),
                                   ("--offload-params", args.offload_params)) if on]
    if given:
        raise UserError(f"{', '.join(given)} and --deepspeed-config both set the ZeRO set-up: keep one")
    setup = planner.read_deepspeed_config(args.deepspeed_config, shape.language_model.hidden)
    if args.precision and setup.precision and args.precision != setup.precision:
        raise UserError(f"--precision {args.precision}, but {args.deepspeed_config} enables {setup.precision}")
    return {"zero_stage": setup.zero_stage, "offload_optimizer": setup.offload_optimizer,
            "offload_params": setup.offload_params, "zero_config": setup.zero,
            "precision": args.precision or setup.precision or "bf16"}


def build_input(args) -> planner.PlanInput:
    shape = resolve_shape(args.model)
    try:
        return planner.PlanInput(
            shape=shape, lora_r=args.lora_r, targets=planner.SPEC_TARGETS[args.targets],
            freeze_vision=args.freeze_vision, micro_batch_size=args.batch,
            max_length=args.max_length, image_tokens=args.image_tokens,
            grad_checkpointing=args.grad_ckpt, flash_attention=args.flash_attn,
            lora_dropout=args.lora_dropout, world_size=args.gpus, gpu_mem_gib=args.gpu_mem,
            **deepspeed_settings(args, shape))
    except ValueError as exc:
        raise UserError(f"{args.deepspeed_config}: {exc}" if args.deepspeed_config else str(exc)) from None


# the zero_optimization keys the ZeRO buffer term reads, per stage
ZERO_BUFFER_KEYS = {1: ("reduce_bucket_size",), 2: ("reduce_bucket_size",),
                    3: ("reduce_bucket_size", "stage3_max_live_parameters", "stage3_prefetch_bucket_size",
                        "stage3_param_persistence_threshold")}


def _describe(p: planner.PlanInput, plan: planner.Plan, deepspeed_file: str | None) -> list[str]:
    n = plan.params
    what = ("full fine-tuning" if p.full_finetune else
            f"LoRA r={p.lora_r} on {p.targets} ({n['lora'] / 1e6:.1f} M params)")
    vision = "vision frozen" if p.freeze_vision else f"ViT + projector trained ({n['trained_base'] / 1e6:.0f} M)"
    offload = [x for x, on in (("optimizer", p.offload_optimizer), ("params", p.offload_params)) if on]
    return [
        f"{p.shape.name} ({n['total'] / 1e9:.2f} B params): {what}, {vision}",
        f"ZeRO-{p.zero_stage}, offload: {', '.join(offload) or 'none'}, {p.precision}, "
        f"{p.world_size} GPU{'s' if p.world_size > 1 else ''}",
        f"sequence: {p.max_length} text + {p.image_tokens_per_sample} image tokens = {p.lm_seq_len}, "
        f"micro batch {p.micro_batch_size}, gradient checkpointing {'on' if p.grad_checkpointing else 'off'}, "
        f"{'flash/SDPA' if p.flash_attention else 'eager'} attention",
    ] + _zero_line(p, plan, deepspeed_file)


def _zero_line(p: planner.PlanInput, plan: planner.Plan, deepspeed_file: str | None) -> list[str]:
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


def run(args) -> int:
    if args.validate:
        from harness.planner.validate import format_rows, validate_against_runs

        rows = validate_against_runs(args.validate)
        print(json.dumps(rows, indent=1) if args.json else format_rows(rows))
        return 0
    if not args.model:
        raise UserError("plan needs --model (or --validate RESULTS)")
    inputs = build_input(args)
    plan = planner.estimate(inputs)
    rows = planner.search_fits(inputs) if args.search else None
    check = planner.deepspeed_crosscheck(inputs) if args.deepspeed_check else None

    if args.json:
        out = plan.to_dict()
        if rows is not None:
            out["search"] = rows
        if check is not None:
            out["deepspeed_check"] = check
        print(json.dumps(out, indent=1))
        return 0

    lines = _describe(inputs, plan, args.deepspeed_config) + [""]
    lines += _table("per GPU", GPU_LABELS, plan.gpu_gib)
    d = plan.details
    lines.append(f"  (activations + transient without checkpointing {d['activations_no_ckpt_gib']:.2f} GiB, "
                 f"with {d['activations_ckpt_gib']:.2f} GiB)")
    lines += [""] + _table(f"CPU RAM (node, {inputs.world_size} process{'es' if inputs.world_size > 1 else ''})",
                           CPU_LABELS, plan.cpu_gib)
    lines += ["", planner.verdict(plan)]
    if rows is not None:
        lines += ["", f"largest max_length that fits on {inputs.world_size} x {inputs.gpu_mem_gib:g} GiB "
                      f"(grid {planner.DEFAULT_MAX_LENGTH_GRID[0]}..{planner.DEFAULT_MAX_LENGTH_GRID[-1]}):",
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
    print("\n".join(lines))
    return 0
