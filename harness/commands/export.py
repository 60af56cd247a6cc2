"""`lorabench export RESULTS --format csv|parquet|tensorboard [--out DIR]`.

Turns run records into a runs table and a long steps table (CSV or Parquet), or into TensorBoard
runs (per-step loss, lr and grad norm, final metrics, and an HParams comparison). It reads the
records only, so it works on any results directory, record file or baseline bundle, after the fact.
Columns: harness.analysis.export. Python: `harness.analysis.export.to_dataframe(RESULTS)`.
"""

from __future__ import annotations

import argparse


def _formats(text: str) -> list[str]:
    from harness.analysis.export import FORMATS

    formats = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(FORMATS)} (comma-separated)")
    return formats


def add_parser(parser) -> None:
    parser.add_argument("results", metavar="RESULTS",
                        help="results directory (runs/*.json), record file or baseline bundle")
    parser.add_argument("--format", type=_formats, default=["csv"], metavar="FORMAT",
                        help="csv, parquet or tensorboard, or several comma-separated (default: csv)")
    parser.add_argument("--out", metavar="DIR",
                        help="where to write (default: RESULTS/export, or <file>-export next to a file); "
                             "TensorBoard runs go to DIR/tensorboard")


def run(args) -> int:
    from harness.analysis.export import export

    for path in export(args.results, args.format, args.out):
        if path.name == "tensorboard":
            print(f"{path}/  (view: tensorboard --logdir {path})")
        else:
            print(path)
    return 0
