"""`lorabench run SUITE.yaml`: every cell of a suite in its own worker; records under results/runs/<suite>/."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path


def add_parser(parser) -> None:
    parser.add_argument("suite", help="a suite YAML (the shipped ones live in harness/suites/)")
    parser.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                        help="run only the cells where KEY=VALUE (repeatable), e.g. --only framework=swift")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec key in every cell, e.g. --set train.steps=5")
    parser.add_argument("--dry-run", action="store_true", help="list the cells and what would run")
    parser.add_argument("--resume", action="store_true",
                        help="skip finished runs (the default; kept for scripts that say it explicitly)")
    parser.add_argument("--force", action="store_true", help="re-run finished runs too")
    parser.add_argument("--results", type=Path, help="results directory (default: results/runs/<suite name>)")
    parser.add_argument("--lanes", metavar="N|auto",
                        help="cells run at a time, each pinned to its own cores (default: the suite's `lanes`, "
                             "else 1); auto: one per core for one-process CPU cells")


def run(args) -> int:
    from harness.run.runner import run_suite
    from harness.config.suite import load_suite, parse_lanes, suite_lanes

    name, cells = load_suite(args.suite, only=args.only, overrides=args.set)
    lanes = parse_lanes(args.lanes, "--lanes") if args.lanes is not None else suite_lanes(args.suite)
    if not cells:
        print(f"no cells match {' '.join(args.only)}", file=sys.stderr)
        return 2
    results_dir = args.results or Path("results/runs") / name
    command = "lorabench run " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["run"] else \
        f"lorabench run {args.suite}"
    try:
        bad = run_suite(name, cells, results_dir, command, force=args.force, dry_run=args.dry_run, lanes=lanes)
    except KeyboardInterrupt:
        print("\ninterrupted: the interrupted run is recorded as cancelled; re-run to resume", file=sys.stderr)
        return 130
    if not args.dry_run:
        print(f"records: {results_dir / 'runs'}  ({bad} not ok)")
    return 1 if bad else 0
