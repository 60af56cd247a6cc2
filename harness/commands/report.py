"""`lorabench report RESULTS... [--out DIR]`: write the paper-style report of a results directory."""

from __future__ import annotations

from pathlib import Path

from harness.errors import UserError


def add_parser(parser) -> None:
    parser.add_argument("results", nargs="+", metavar="RESULTS",
                        help="results directory (with runs/*.json), record file or bundle file")
    parser.add_argument("--out", metavar="DIR",
                        help="output directory (default: results/reports/<suite>/)")


def run(args) -> int:
    from harness.analysis.report import write_report
    from harness.results.store import load_parity_docs, load_records

    records, parity_docs, seen = [], [], set()
    for source in args.results:
        loaded = load_records(source)
        if not loaded:
            raise UserError(f"{source}: no run records (expected runs/*.json or a bundle file)")
        for record in loaded:  # the same run given twice (dir and bundle) is counted once
            key = (record["run_id"], record.get("started_at"))
            if key not in seen:
                seen.add(key)
                records.append(record)
        parity_docs += [d for d in load_parity_docs(source, loaded) if d not in parity_docs]
    suites = sorted({str(r["suite"]) for r in records})
    out = Path(args.out) if args.out else Path("results") / "reports" / "+".join(suites)
    paths = write_report(records, out, parity_docs)
    n_ok = sum(r["status"] == "ok" for r in records)
    print(f"report of {len(records)} runs ({n_ok} ok) written to {out}/: "
          f"{paths['md'].name}, {paths['tex'].name}, {paths['html'].name}, figures/")
    return 0
