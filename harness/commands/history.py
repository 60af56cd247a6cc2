"""`lorabench history RESULTS... [--metric NAME ...] [--out FILE.png]`: metrics over git commits.

Reads results directories and/or baseline bundles, groups the ok runs by env.git_commit (dirty runs
apart), orders commits by their first run's start time, and prints one table per metric (rows:
commits, columns: cells, values: mean over seeds). With --out, also plots the first metric.
"""

from __future__ import annotations

from pathlib import Path

from harness.errors import UserError
from harness.results.metric_table import HISTORY_DEFAULT as DEFAULT_METRICS


def add_parser(parser) -> None:
    parser.add_argument("results", nargs="+", metavar="RESULTS",
                        help="results directories, record files or baseline bundles")
    parser.add_argument("--metric", action="append", metavar="NAME",
                        help=f"metric to show (repeatable; default: {', '.join(DEFAULT_METRICS)} "
                             "when present); the plot shows the first")
    parser.add_argument("--out", metavar="FILE.png", help="also plot the first metric over commits "
                        "(writes FILE.png and FILE.pdf)")


def run(args) -> int:
    from harness.analysis.figures import metric_over_commits
    from harness.analysis.regress import format_history, history_table
    from harness.results.metric_table import METRIC_DIRECTION
    from harness.results.store import load_records, metric_values

    records, seen = [], set()
    for source in args.results:
        for record in load_records(source):
            key = (record["run_id"], record.get("started_at"))
            if key not in seen:  # the same run in a results dir and a baseline counts once
                seen.add(key)
                records.append(record)
    if not any(r["status"] == "ok" for r in records):
        raise UserError("no ok run records in " + ", ".join(args.results))
    for name in args.metric or ():
        if name not in METRIC_DIRECTION:
            raise UserError(f"--metric {name!r}: unknown; known: {', '.join(sorted(METRIC_DIRECTION))}")
    metrics = args.metric or [m for m in DEFAULT_METRICS if metric_values(records, m)]
    if not metrics:
        raise UserError("none of the default metrics is in these records; pick one with --metric")
    tables = [history_table(records, m) for m in metrics]
    for table in tables:
        print(f"{table['metric']} ({METRIC_DIRECTION[table['metric']]} is better), mean over seeds:")
        print(format_history(table))
        print()
    if args.out:
        first = tables[0]
        series = [{"label": c, "framework": c.split("/")[0], "values": first["values"][c]}
                  for c in first["cells"]]
        png = metric_over_commits(first["commits"], series, Path(args.out).with_suffix(""),
                                  ylabel=f"{first['metric']} ({METRIC_DIRECTION[first['metric']]} is better)")
        print(f"plot of {first['metric']} over {len(first['commits'])} commits: {png}")
    return 0
