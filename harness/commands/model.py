"""`lorabench model build|eval`: the embedded tiny model."""

from __future__ import annotations

import json
from pathlib import Path

from harness.errors import UserError


def add_parser(parser) -> None:
    sub = parser.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    b = sub.add_parser("build", help="build and pre-train the tiny model (cached; instant when built)")
    b.add_argument("--family", default="qwen2vl", choices=["qwen2vl", "minicpmv"],
                   help="qwen2vl: the `tiny` model (Qwen2-VL architecture); minicpmv: `tiny-minicpmv` (MiniCPM-V 4.6)")
    b.add_argument("--preset", default="tiny", choices=["tiny"])
    b.add_argument("--out", type=Path, help="output directory (default: the cache under .cache/models)")
    b.add_argument("--force", action="store_true", help="rebuild even when a matching checkpoint exists")
    b.add_argument("--steps", type=int, help="reading-stage steps (default: the recipe's)")
    b.add_argument("--instruction-steps", type=int,
                   help="instruction-stage steps (default: the recipe's; 0 builds the reading stage only)")
    b.add_argument("--resume", action="store_true", help="continue an interrupted or paused build from its saved state")
    b.add_argument("--stop-after", type=float, metavar="MINUTES",
                   help="pause after this many minutes (state saved; continue with --resume): build in parts")
    b.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    b.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("eval", help="score a checkpoint (optionally with a LoRA adapter) on a test split")
    e.add_argument("model_dir", help="checkpoint directory, or an embedded model: 'tiny', 'tiny-minicpmv'")
    e.add_argument("--task", choices=["transcribe", "extract"], default="transcribe")
    e.add_argument("--adapter", type=Path, help="a PEFT-format adapter directory to apply")
    e.add_argument("--dataset", default="synthdocs", help="card name/path or a directory of JSONL files")
    e.add_argument("--split", default="test")
    e.add_argument("--n", type=int, default=200, help="at most this many samples")
    e.add_argument("--json", action="store_true")


def run(args) -> int:
    return _build(args) if args.model_command == "build" else _eval(args)


def _build(args) -> int:
    import time

    from harness.tinymodel.build import BuildPlan, ForgePaused, build_tiny_model

    t = time.perf_counter()
    plan = BuildPlan(family=args.family, preset=args.preset, seed=args.seed, steps=args.steps,
                     instruction_steps=args.instruction_steps)
    try:
        path, meta = build_tiny_model(plan, out_dir=args.out, force=args.force, resume=args.resume,
                           stop_after_minutes=args.stop_after, device=args.device)
    except ForgePaused as paused:
        print(paused)
        return 0
    q = meta.get("base_quality", {})
    print(f"model: {path}")
    print(f"params: {meta['params']['total']:,} (vision {meta['params']['vision_tower']:,}, projector "
          f"{meta['params']['projector']:,}, language model {meta['params']['language_model']:,})")
    if q:
        print(f"base test CER (transcribe): {q['transcribe']['cer']:.4f}   field F1 (extract): "
              f"{q['extract'].get('field_f1', 0):.3f}")
    print(f"{'built' if time.perf_counter() - t > 5 else 'cached'} in {time.perf_counter() - t:.1f} s")
    return 0


def _eval(args) -> int:
    from harness.data.cards import resolve_dataset_dir
    from harness.data.samples import load_samples, split_file
    from harness.eval.evaluate import evaluate
    from harness.run.job import resolve_model_dir

    model_dir = resolve_model_dir(args.model_dir)
    if args.adapter is not None and not (args.adapter / "adapter_config.json").is_file():
        raise UserError(f"{args.adapter}: not a PEFT adapter directory (no adapter_config.json)")
    split = split_file(resolve_dataset_dir(args.dataset), args.split, args.task)
    samples = load_samples(split, task=args.task)[: args.n]
    scores = evaluate(model_dir, samples, adapter_dir=args.adapter).metrics
    if args.json:
        print(json.dumps(scores))
    else:
        adapter = f" + {args.adapter}" if args.adapter else ""
        print(f"{model_dir}{adapter} on {args.split}/{args.task} (n={scores['n']})")
        for k in ("cer", "wer", "exact_match", "field_precision", "field_recall", "field_f1", "field_anls",
                  "json_valid_rate"):
            if k in scores:
                lo, hi = scores[f"{k}_ci"]
                print(f"  {k:<16} {scores[k]:.4f}  [{lo:.4f}, {hi:.4f}]")
    return 0
