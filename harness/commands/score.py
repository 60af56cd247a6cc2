"""`lorabench score REFS.jsonl PREDS.jsonl | RESULTS.jsonl [--json] [--per-sample FILE] [--pred-key ...]`.

Scores predictions against references with `harness.eval.metrics` (CER, WER, exact match, and field
precision/recall/F1 + JSON validity when the references carry `fields`), with 95% bootstrap
confidence intervals. Plain output is an aligned table; `--json` prints the `metrics.score` object.

Inputs, besides lorabench's own `{"id", "text"}` references and `{"id", "prediction"}` predictions:
- ms-swift's `swift infer` output (`response` = the prediction, `labels` = the reference, no id), as
  one file holding both, or as PREDS next to lorabench references: rows without an id are matched
  by order, row n with row n, and a note on stderr says so;
- any other JSONL, e.g. an lm-eval samples file, by naming its keys:
  `--pred-key filtered_resps --ref-key target --id-key doc_id`.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("refs", metavar="REFS.jsonl",
                        help='references, one {"id", "text", "fields"?} object per line; or, alone, one '
                             "file whose rows hold both (e.g. `swift infer` output)")
    parser.add_argument("preds", metavar="PREDS.jsonl", nargs="?",
                        help='predictions, one {"id", "prediction"} object per line (or `swift infer` output)')
    parser.add_argument("--pred-key", metavar="KEY",
                        help="the prediction's key (default: prediction; response in `swift infer` output); "
                             "a.b reaches into nested objects")
    parser.add_argument("--ref-key", metavar="KEY",
                        help="the reference text's key (default: text; labels in `swift infer` output)")
    parser.add_argument("--id-key", metavar="KEY",
                        help="the id's key (default: id; rows without it are matched by order)")
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


def _note(message: str) -> None:
    print(f"lorabench: note: {message}", file=sys.stderr)


def _is_swift_infer(row: dict) -> bool:
    return "response" in row and "labels" in row


def load_one_file(args) -> tuple[list[dict], dict[str, str]]:
    """References and predictions from one file whose rows hold both."""
    from harness.errors import UserError
    from harness.eval.score_inputs import SWIFT_INFER_KEYS, InputKeys, first_row, load_pairs

    row = first_row(args.refs)
    if args.pred_key is None and args.ref_key is None and _is_swift_infer(row):
        keys = SWIFT_INFER_KEYS
        _note(f"{args.refs}: ms-swift `swift infer` output: each row's 'response' is scored against "
              "its 'labels'")
    elif args.pred_key and args.ref_key:
        keys = InputKeys(id=None, text=args.ref_key, prediction=args.pred_key)
    else:
        raise UserError(f"{args.refs}: one file needs --pred-key and --ref-key naming the prediction and "
                        "the reference in each row (`swift infer` output is read without them)")
    id_key = args.id_key or ("id" if "id" in row else None)
    keys = InputKeys(id=id_key, text=keys.text, prediction=keys.prediction)
    return load_pairs(args.refs, keys)


def load_two_files(args) -> tuple[list[dict], dict[str, str]]:
    """References from REFS and predictions from PREDS, matched by id or, without ids, by order."""
    from harness.eval.score_inputs import LORABENCH_KEYS, InputKeys, first_row, load_preds, load_refs

    ref_row, pred_row = first_row(args.refs), first_row(args.preds)
    pred_key = args.pred_key or LORABENCH_KEYS.prediction
    if args.pred_key is None and pred_key not in pred_row and "response" in pred_row:
        pred_key = "response"
        _note(f"{args.preds}: ms-swift `swift infer` output: its 'response' is the prediction")
    id_key = args.id_key or LORABENCH_KEYS.id
    # an empty file, or a first row that is no object, is left to the loaders' own errors
    refs_have_ids = args.id_key is not None or not ref_row or id_key in ref_row
    preds_have_ids = args.id_key is not None or not pred_row or id_key in pred_row
    ids_on_both = refs_have_ids and preds_have_ids
    if not ids_on_both:
        _note(f"{args.refs if preds_have_ids else args.preds} has no {id_key!r}: predictions are "
              "matched to references by order (row n with row n)")
    ref_keys = InputKeys(id=id_key if refs_have_ids else None, text=args.ref_key or LORABENCH_KEYS.text)
    refs = load_refs(args.refs, ref_keys)
    pred_keys = InputKeys(id=id_key if ids_on_both else None, prediction=pred_key)
    preds = load_preds(args.preds, [r["id"] for r in refs], pred_keys)
    return refs, preds


def run(args: argparse.Namespace) -> int:
    from harness.errors import UserError
    from harness.eval.metrics import per_sample, summarize, write_per_sample

    if args.n_boot < 1:
        raise UserError(f"--n-boot must be >= 1, got {args.n_boot}")
    refs, preds = load_one_file(args) if args.preds is None else load_two_files(args)
    rows = per_sample(refs, preds)
    if args.per_sample is not None:
        write_per_sample(rows, args.per_sample)
    result = summarize(rows, n_boot=args.n_boot, seed=args.seed)
    print(json.dumps(result) if args.json else format_table(result))
    return 0
