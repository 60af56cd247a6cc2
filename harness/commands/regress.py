"""`lorabench regress --baseline FILE --current RESULTS [--format text|json|markdown]
[--threshold METRIC=FRACTION ...]`.

`--format markdown` prints a table for a CI job summary (e.g. `>> "$GITHUB_STEP_SUMMARY"`).

Exit status: 0 nothing regressed, 1 something is worse beyond threshold and noise (or a baseline cell
is missing / failing now), 2 bad input (unreadable or malformed file, wrong schema_version, no records).
"""

from __future__ import annotations

import json
import sys

from harness.errors import UserError


def add_parser(parser) -> None:
    parser.add_argument("--baseline", required=True, metavar="FILE",
                        help="baseline bundle (results/baselines/<suite>.json) or results directory")
    parser.add_argument("--current", required=True, metavar="RESULTS",
                        help="current results directory (runs/*.json), record file or bundle")
    parser.add_argument("--format", choices=("text", "json", "markdown"), default="text",
                        help='text: an aligned table (default); json: {"regressed", "rows", "warnings"}; '
                             "markdown: a table for CI job summaries")
    parser.add_argument("--json", action="store_true", help="the same as --format json")
    parser.add_argument("--metrics", metavar="NAME[,NAME]",
                        help="compare only these metrics (e.g. peak_anon_above_baseline_mib,peak_anon_mib: memory "
                             "alone, when the two runs' timings are not comparable); whole-cell verdicts stay")
    parser.add_argument("--threshold", action="append", default=[], metavar="METRIC=FRACTION",
                        help="override a threshold, e.g. field_f1=0.03 (absolute for quality metrics) "
                             "or peak_rss_mib=0.2 (a fraction of the baseline for the others); repeatable")


def only_metrics(result: dict, names: list[str]) -> dict:
    """The comparison restricted to `names` (rows of other metrics dropped, the verdict recomputed)."""
    from harness.analysis.regress import REGRESSION_VERDICTS
    from harness.results.metric_table import METRICS

    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise UserError(f"--metrics: unknown metric {unknown[0]!r} (known: {', '.join(METRICS)})")
    rows = [r for r in result["rows"] if r["metric"] is None or r["metric"] in names]
    return {**result, "rows": rows, "regressed": any(r["verdict"] in REGRESSION_VERDICTS for r in rows)}


def run(args) -> int:
    from harness.analysis.regress import compare_to_baseline, format_markdown, format_table, parse_thresholds
    from harness.results.store import load_records

    thresholds = parse_thresholds(args.threshold)
    baseline = load_records(args.baseline)
    if not baseline:
        raise UserError(f"{args.baseline}: no run records in the baseline")
    current = load_records(args.current)
    if not current:
        raise UserError(f"{args.current}: no run records in the current results")
    result = compare_to_baseline(baseline, current, thresholds)
    if args.metrics:
        result = only_metrics(result, args.metrics.split(","))
    for line in result["warnings"]:
        print(f"lorabench: warning: {line}", file=sys.stderr)
    output = "json" if args.json else args.format
    if output == "json":
        print(json.dumps(result, indent=1))
    elif output == "markdown":
        print(format_markdown(result), end="")
    else:
        print(format_table(result))
    return 1 if result["regressed"] else 0
