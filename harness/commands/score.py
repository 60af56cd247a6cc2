"""`lorabench score REFS.jsonl PREDS.jsonl [--json] [--per-sample FILE]`.

Scores predictions against references with `harness.eval.metrics` (CER, WER, exact match, and field
precision/recall/F1 + JSON validity when the references carry `fields`), with 95% bootstrap
confidence intervals. Plain output is an aligned table; `--json` prints the `metrics.score` object.
"""

from __future__ import annotations

import argparse
import json


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("refs", metavar="REFS.jsonl",
                        help='references, one {"id", "text", "fields"?} object per line')
    parser.add_argument("preds", metavar="PREDS.jsonl",
                        help='predictions, one {"id", "prediction"} object per line')
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object: n, metrics and <metric>_ci intervals")
    parser.add_argument("--per-sample", metavar="FILE",
                        help="write one JSON line per reference id with its own scores and counts")
    parser.add_argument("--n-boot", type=int, default=1000, metavar="N",
                        help="bootstrap resamples for the 95%% intervals (default: 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")


def format_table(result: dict) -> str:
    """Aligned `metric  value  95% CI` lines for the plain output."""
    metrics = [name for name in result if name != "n" and not name.endswith("_ci")]
    width = max(len(name) for name in ["metric", "n", *metrics])
    lines = [f"{'metric':<{width}}  {'value':>8}  95% CI", f"{'n':<{width}}  {result['n']:>8d}"]
    for name in metrics:
        low, high = result[f"{name}_ci"]
        lines.append(f"{name:<{width}}  {result[name]:>8.4f}  [{low:.4f}, {high:.4f}]")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from harness.errors import UserError
    from harness.eval.metrics import score_files

    if args.n_boot < 1:
        raise UserError(f"--n-boot must be >= 1, got {args.n_boot}")
    result = score_files(args.refs, args.preds, n_boot=args.n_boot, seed=args.seed,
                         per_sample_path=args.per_sample)
    print(json.dumps(result) if args.json else format_table(result))
    return 0
