"""`lorabench plan`: per-GPU memory of a LoRA fine-tuning set-up, and whether it fits.

    lorabench plan --model minicpm-v-2_6 --gpus 3 --gpu-mem 24 --zero 3 --offload-optimizer \
        --offload-params --precision bf16 --batch 1 --max-length 2048 --search

    lorabench plan --model path/to/checkpoint --gpus 2 --zero 2     # a local Hugging Face checkpoint
    lorabench plan --spec harness/suites/default.yaml                # the runs a spec or suite describes

Prints the breakdown per GPU and for the node's CPU RAM, the verdict line, and with --search the
largest max_length that fits for each batch size. --json prints the same as one JSON object.
--deepspeed-config FILE plans for the user's own DeepSpeed JSON (stage, offloads, buffer sizes).
--spec plans a run spec (the same breakdown) or a suite (one line per cell) from its own settings;
for a single spec whose data set is at hand it adds the whole run: the estimate at the longest
sample and the largest image the training split holds, next to the one at train.max_length.
Formulas and assumptions: docs/plan.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from harness import planner
from harness.planner import render
from harness.errors import UserError

# The set-up flags a spec also sets, with their defaults for --model (None in argparse, so that a
# flag given next to --spec can be told from its default).
SETUP_DEFAULTS = {"gpus": 1, "batch": 1, "max_length": 2048, "lora_r": 8, "lora_dropout": 0.05,
                  "targets": "lm-linear", "freeze_vision": True, "grad_ckpt": True}
SETUP_FLAGS = {"model": "--model", "gpus": "--gpus", "batch": "--batch", "max_length": "--max-length",
               "lora_r": "--lora-r", "lora_dropout": "--lora-dropout", "targets": "--targets",
               "freeze_vision": "--[no-]freeze-vision", "grad_ckpt": "--[no-]grad-ckpt", "zero": "--zero",
               "precision": "--precision", "deepspeed_config": "--deepspeed-config",
               "offload_optimizer": "--offload-optimizer", "offload_params": "--offload-params"}


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--validate-published", action="store_true",
                        help="compare estimates with the published, cited measurements in "
                             "harness/planner/published/ (fitted on one half, error on the other)")
    parser.add_argument("--validate", metavar="RESULTS",
                        help="compare estimates with the peak memory measured by the runs in RESULTS "
                             "(e.g. results/runs/memory) instead of planning")
    parser.add_argument("--model",
                        help=f"{' | '.join(planner.BUILTIN_SHAPES)} | path to a shape JSON | path to a local "
                             "Hugging Face checkpoint directory (its config.json; model_type "
                             f"{', '.join(planner.HF_ARCHITECTURES)}; no weights needed)")
    parser.add_argument("--spec", metavar="SPEC.yaml",
                        help="plan what a lorabench run spec or suite file describes: model, batch, "
                             "train.max_length (text + image tokens), LoRA r/targets/dropout, precision, "
                             "ZeRO stage, offloads, world size, freeze_vision, checkpointing; a suite plans "
                             "each cell on one line")
    parser.add_argument("--data", action=argparse.BooleanOptionalAction, default=None,
                        help="with --spec: also plan the whole run from the data set's own lengths (the longest "
                             "sample, the largest image). Default: when the data set is built (or a directory) "
                             "and --image-tokens is not given; --data builds a card's data set first")
    parser.add_argument("--gpus", type=int, help="number of GPUs (world size; default 1)")
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
    parser.add_argument("--batch", type=int, help="micro batch size per GPU (default 1)")
    parser.add_argument("--max-length", type=int, help="text tokens per sample (default 2048)")
    parser.add_argument("--image-tokens", type=int, default=None,
                        help="LM tokens from images per sample (default: the model's)")
    parser.add_argument("--lora-r", type=int, help="default 8")
    parser.add_argument("--lora-dropout", type=float, help="default 0.05")
    parser.add_argument("--targets", choices=list(planner.SPEC_TARGETS),
                        help="lm-linear (default): LM linears (ms-swift's all-linear); lm+vision-linear: plus "
                             "the vision tower's; every-linear: plus the projector (PEFT's all-linear); old "
                             "names still read")
    parser.add_argument("--freeze-vision", action=argparse.BooleanOptionalAction, default=None,
                        help="--no-freeze-vision trains the ViT and projector in full (default: frozen)")
    parser.add_argument("--grad-ckpt", action=argparse.BooleanOptionalAction, default=None,
                        help="gradient checkpointing (default on)")
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
    flags = {k: SETUP_DEFAULTS[k] if getattr(args, k) is None else getattr(args, k) for k in SETUP_DEFAULTS}
    try:
        return planner.PlanInput(
            shape=shape, lora_r=flags["lora_r"], targets=planner.SPEC_TARGETS[flags["targets"]],
            freeze_vision=flags["freeze_vision"], micro_batch_size=flags["batch"],
            max_length=flags["max_length"], image_tokens=args.image_tokens,
            grad_checkpointing=flags["grad_ckpt"], flash_attention=args.flash_attn,
            lora_dropout=flags["lora_dropout"], world_size=flags["gpus"], gpu_mem_gib=args.gpu_mem,
            **deepspeed_settings(args, shape))
    except ValueError as exc:
        raise UserError(f"{args.deepspeed_config}: {exc}" if args.deepspeed_config else str(exc)) from None


# --- --spec: a run spec or a suite ------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SpecPlan:
    """One spec (or suite cell) planned: `inputs` and `plan`, or the reason it was not."""

    label: str
    spec: dict
    inputs: planner.PlanInput | None = None
    plan: planner.Plan | None = None
    capped: bool = False  # the model's default image tokens were cut to fit train.max_length
    error: str | None = None


def _spec_model_dir(name: str) -> Path:
    """A spec's `model` as a checkpoint directory; for an embedded model without a build for this code version,
    the committed checkpoint (only its config.json is read: the architecture is what counts)."""
    from harness.run.job import resolve_model_dir

    try:
        return resolve_model_dir(name)
    except UserError:
        from harness.tinymodel.build import EMBEDDED_MODELS, FAMILIES

        asset = FAMILIES[EMBEDDED_MODELS[name]][1] if name in EMBEDDED_MODELS else None
        if asset is None or not (asset / "config.json").is_file():
            raise
        return asset


def load_spec_plans(path: str, args) -> tuple[str | None, list[SpecPlan]]:
    """(suite name or None, one SpecPlan per spec): a single run spec, or every cell of a suite.
    The LM sequence is the spec's train.max_length, the collator's cap on text + image tokens:
    every sample at the cap, with --image-tokens or the model's default image tokens (cut to
    max_length - 1 when the default does not fit)."""
    from harness.config.spec import load_yaml, make_spec
    from harness.config.suite import SUITE_KEYS, load_suite

    doc = load_yaml(path)
    if set(doc) & set(SUITE_KEYS):
        suite, cells = load_suite(path)
        specs = [(" ".join(f"{k}={v}" for k, v in cell.key.items()) or cell.run_id, cell.spec) for cell in cells]
    else:
        suite, specs = None, [(str(path), make_spec(doc, source=str(path)))]
    shapes: dict[str, planner.Shape] = {}
    out = []
    for label, spec in specs:
        if spec.model not in shapes:
            shapes[spec.model] = planner.shape_from_hf_config(_spec_model_dir(spec.model))
        shape, seq = shapes[spec.model], spec.train.max_length
        image, capped = args.image_tokens, False
        if image is None:
            image = shape.image_tokens.default_per_sample
            capped = image >= seq
            image = min(image, seq - 1)
        elif image >= seq:
            raise UserError(f"--image-tokens {image} leaves no text tokens in train.max_length {seq} ({label})")
        try:
            inputs = planner.plan_input_from_spec(spec, shape, max_length=seq - image, image_tokens=image,
                                                  gpu_mem_gib=args.gpu_mem, flash_attention=args.flash_attn)
        except ValueError as exc:
            if suite is None:
                raise UserError(f"{path}: {exc}") from None
            out.append(SpecPlan(label, spec, error=str(exc)))
            continue
        out.append(SpecPlan(label, spec, inputs, planner.estimate(inputs), capped))
    return suite, out


def whole_run(args, sp: SpecPlan):
    """The spec planned over its data set's lengths (harness.planner.dataset_lengths.WholeRun), or None
    when it is not asked for (--no-data, --image-tokens) or, by default, the data set is not built."""
    from harness.planner import dataset_lengths as dl

    if args.data is False or sp.inputs is None:
        return None
    if args.image_tokens is not None:
        if args.data:
            raise UserError("--data reads the image tokens from the data set; --image-tokens sets them: keep one")
        return None
    ready = dl.dataset_ready(sp.spec)
    if ready is None and not args.data:
        print(f"(data set {sp.spec.dataset!r} is not built: planned at train.max_length only; --data builds it "
              "and adds the whole run)", file=sys.stderr)
        return None
    lengths = dl.data_lengths(sp.spec, _spec_model_dir(sp.spec.model), ready)
    return dl.whole_run(sp.inputs, lengths, sp.spec.train.max_length)


def _whole_run_dict(run) -> dict:
    def sample(s) -> dict:
        return dataclasses.asdict(s) | {"text_tokens": s.text_tokens}
    return {"source": str(run.lengths.source), "samples": len(run.lengths.samples), "max_length": run.max_length,
            "truncated": run.truncated, "longest": sample(run.lengths.longest),
            "largest_image": sample(run.lengths.largest_image), "peak_at": run.at.id,
            "peak": planner.plan_dict(run.peak)}


def _spec_flags_given(args) -> list[str]:
    """The set-up flags on the command line (store_true flags when on; the others when not None)."""
    return [flag for key, flag in SETUP_FLAGS.items()
            if (getattr(args, key) if key.startswith("offload_") else getattr(args, key) is not None)]


def run_spec(args) -> int:
    given = _spec_flags_given(args)
    if given:
        raise UserError(f"{', '.join(given)} and --spec both set the set-up: the spec decides it "
                        "(drop the flag or change the spec)")
    suite, plans = load_spec_plans(args.spec, args)
    if suite is None or len(plans) == 1:
        sp = plans[0]
        if sp.error:
            raise UserError(f"{args.spec}: {sp.error}")
        header = [f"spec {args.spec}" + (f" (suite {suite}, cell {sp.label})" if suite else "")
                  + f": train.max_length {sp.inputs.lm_seq_len} = text + image tokens"
                  + (" (the model's default image tokens cut to fit)" if sp.capped else "")]
        run = whole_run(args, sp)
        extra = {"spec": args.spec} | ({"whole_run": _whole_run_dict(run)} if run else {})
        rc = print_plan(args, sp.inputs, sp.plan, header, extra)
        if run and not args.json:
            print("\n".join(render.whole_run_lines(run, sp.plan)))
        return rc
    if args.search or args.deepspeed_check:
        raise UserError(f"--search and --deepspeed-check plan one set-up; {args.spec} has {len(plans)} cells: "
                        "plan one with a single spec (or --model)")
    if args.json:
        cells = [{"cell": sp.label, "error": sp.error} if sp.error else {"cell": sp.label, **planner.plan_dict(sp.plan)}
                 for sp in plans]
        print(json.dumps({"spec": args.spec, "suite": suite, "cells": cells}, indent=1))
        return 0
    capped = any(sp.capped for sp in plans)
    print("\n".join([f"{args.spec} (suite {suite}): {len(plans)} cells, per-GPU estimate with every sample at "
                      "train.max_length" + (" (the model's default image tokens cut to fit)" if capped else "")]
                     + [f"{sp.label}: not planned: {sp.error}" if sp.error else
                        render.cell_line(sp.label, sp.spec.lora.targets, sp.inputs, sp.plan) for sp in plans]))
    return 0


def run(args) -> int:
    if args.validate_published:
        from harness.planner.published import format_validation, validate_published

        result = validate_published()
        if args.json:
            print(json.dumps({"fragmentation_factor": result.fragmentation_factor,
                              "band": dataclasses.asdict(result.band),
                              "rows": [dataclasses.asdict(r) | {"error": r.error, "ratio": r.ratio}
                                       for r in result.rows]}, indent=1))
        else:
            print(format_validation(result))
        return 0
    if args.validate:
        from harness.planner.validate import format_rows, validate_against_runs

        rows = validate_against_runs(args.validate)
        print(json.dumps(rows, indent=1) if args.json else format_rows(rows))
        return 0
    if args.spec:
        return run_spec(args)
    if not args.model:
        raise UserError("plan needs --model or --spec (or --validate RESULTS)")
    inputs = build_input(args)
    return print_plan(args, inputs, planner.estimate(inputs))


def print_plan(args, inputs: planner.PlanInput, plan: planner.Plan, header: list[str] = (),
               extra: dict | None = None) -> int:
    """The breakdown of one set-up (text, or --json), with --search and --deepspeed-check."""
    rows = planner.search_fits(inputs) if args.search else None
    check = planner.deepspeed_crosscheck(inputs) if args.deepspeed_check else None

    if args.json:
        out = {**(extra or {}), **planner.plan_dict(plan)}
        if rows is not None:
            out["search"] = rows
        if check is not None:
            out["deepspeed_check"] = check
        print(json.dumps(out, indent=1))
        return 0

    print(render.plan_text(inputs, plan, args.deepspeed_config, header, rows, check))
    return 0
