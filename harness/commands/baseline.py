"""`lorabench baseline update --suite NAME --from RESULTS [--to FILE]`: promote ok records to a baseline.

Writes a bundle (results/baselines/<suite>.json by default) atomically: the ok records of that suite,
step logs stripped, everything `regress` and `report` read kept (metrics incl. final_loss and the
bootstrap intervals, spec, cell, env, run ids).
"""

from __future__ import annotations

import datetime
from pathlib import Path

from harness.errors import UserError


def add_parser(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    update = sub.add_parser("update", help="promote the current ok records of a suite to its baseline",
                            description="promote the current ok records of a suite to its baseline")
    update.add_argument("--suite", required=True, metavar="NAME", help="suite name (records' 'suite')")
    update.add_argument("--from", dest="source", required=True, metavar="RESULTS",
                        help="results directory, record file or bundle")
    update.add_argument("--to", metavar="FILE", help="bundle to write (default: results/baselines/<suite>.json)")


def run(args) -> int:
    from harness.results.store import load_records, make_bundle, write_json_atomic

    records = load_records(args.source)
    of_suite = [r for r in records if r["suite"] == args.suite]
    ok = [r for r in of_suite if r["status"] == "ok"]
    if not ok:
        found = sorted({r["suite"] for r in records})
        raise UserError(f"{args.source}: no ok records of suite {args.suite!r}"
                        + (f" (suites found: {', '.join(found)})" if found else " (no records at all)"))
    created_at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    target = Path(args.to) if args.to else Path("results") / "baselines" / f"{args.suite}.json"
    write_json_atomic(target, make_bundle(ok, args.suite, created_at))
    skipped = len(of_suite) - len(ok)
    print(f"baseline {target}: {len(ok)} ok records of suite {args.suite!r}"
          + (f" ({skipped} not-ok records left out)" if skipped else ""))
    return 0
