"""`make memory-gpu`: the memory suite on a GPU, then the planner checked against what it measured.

    python -m harness.memory_gpu [--dry-run] [--zero-only] [--model DIR] [--results DIR] [--out DIR]
    python -m harness.memory_gpu --rows-only [--results DIR]      # rows from runs already made

Each step is printed before it runs:
1. `lorabench run harness/suites/memory-gpu.yaml --results RESULTS` (bf16 on `device: cuda`; the
   levers include ZeRO-2, ZeRO-3 and ZeRO-3 with optimizer and parameter offload); with
   --zero-only, only the cells of those three levers (`--only lever=...`, one run command each);
2. `lorabench plan --validate RESULTS`, its table written to OUT/plan_validation.txt;
3. `lorabench report RESULTS --out OUT`;
4. the ZeRO levers' records become measured rows of the validation set
   (harness/planner/published/lora_memory.yaml, harness.planner.measured: marked as measured by
   lorabench, with this command and the date; a row of the same id is replaced), then
   `lorabench plan --validate-published` prints the table with them.
A run that does not end ok does not stop the others: steps 2 to 4 use the runs that did, and the
exit status is 1. `--dry-run` prints the commands and the cells (through `lorabench run --dry-run`)
and trains nothing, so it works on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import shlex
import sys
from pathlib import Path

from harness.paths import HARNESS_DIR, REPO_ROOT
from harness.planner.measured import ZERO_LEVERS, measured_rows, write_rows
from harness.planner.published import DATA

SUITE = HARNESS_DIR / "suites" / "memory-gpu.yaml"
DEFAULT_RESULTS = Path("results/runs/memory-gpu")
DEFAULT_OUT = Path("results/reports/reference/memory-gpu")


def _shown(path: Path) -> str:
    """A path as a user would type it from the repository root."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def commands(results: Path, out: Path, model: str | None, zero_only: bool = False) -> dict[str, list[list[str]]]:
    """The lorabench argument lists of each step (`run` is one command per lever with --zero-only)."""
    run = ["run", _shown(SUITE), "--results", str(results)] + (["--set", f"model={model}"] if model else [])
    runs = [run + ["--only", f"lever={lever}"] for lever in ZERO_LEVERS] if zero_only else [run]
    return {"run": runs, "validate": [["plan", "--validate", str(results)]],
            "report": [["report", str(results), "--out", str(out)]],
            "published": [["plan", "--validate-published"]]}


def add_rows(results: Path, published: Path, command: str) -> int:
    """Step 4: the ZeRO levers' GPU records as measured rows of the validation set."""
    rows = measured_rows(results, command, datetime.datetime.now(datetime.timezone.utc).date().isoformat())
    if not rows:
        print(f"memory-gpu: no finished GPU run of {', '.join(ZERO_LEVERS)} in {results}: no rows written",
              file=sys.stderr)
        return 1
    added, replaced = write_rows(rows, published)
    for row in rows:
        print(f"  {row['id']}: {row['figure']} {row['unit']} measured, batch {row['setup']['batch']} x "
              f"{row['setup']['max_length']} tokens, ZeRO-{row['setup']['zero']}")
    print(f"{published}: {len(added)} rows added, {len(replaced)} replaced")
    return 0


def cell_lines(run_args: list[str]) -> list[str]:
    """One line per cell: its lever and what sets its memory (device, precision, ZeRO, offload)."""
    from harness.config.suite import load_suite

    sets = [run_args[i + 1] for i, a in enumerate(run_args) if a == "--set"]
    only = [run_args[i + 1] for i, a in enumerate(run_args) if a == "--only"]
    _, cells = load_suite(SUITE, only=only, overrides=sets)
    lines = []
    for cell in cells:
        spec, dist = cell.spec, cell.spec.distributed
        offload = [name for name, on in (("optimizer", dist.offload_optimizer), ("params", dist.offload_params)) if on]
        zero = "no DeepSpeed" if dist.zero_stage is None else f"ZeRO-{dist.zero_stage}"
        lines.append(f"  {spec.framework:<6} | {cell.key.get('lever', ''):<26} | {spec.device} | "
                     f"{spec.train.precision:<4} | {zero:<12} | offload: {', '.join(offload) or 'none'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.memory_gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print the commands and the cells; train nothing")
    parser.add_argument("--zero-only", action="store_true",
                        help=f"run only the DeepSpeed levers the rows come from ({', '.join(ZERO_LEVERS)})")
    parser.add_argument("--rows-only", action="store_true",
                        help="run nothing: write the rows from the records already in --results")
    parser.add_argument("--model", help="a local checkpoint directory instead of the tiny model")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="where the run records go")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="where plan_validation.txt and the report go")
    parser.add_argument("--published", type=Path, default=DATA, help="the validation set the rows go to")
    raw = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(raw)
    from harness.cli import main as lorabench

    command = shlex.join(["python", "-m", "harness.memory_gpu", *raw])
    steps = commands(args.results, args.out, args.model, args.zero_only)
    if args.rows_only:
        rc = add_rows(args.results, args.published, command)
        return rc or _show_published(lorabench, steps, args.published)
    if args.dry_run:
        return _dry_run(lorabench, steps, args)
    import torch

    if not torch.cuda.is_available():
        print("memory-gpu: no CUDA device here (torch.cuda.is_available() is False); "
              "DRY_RUN=1 lists what would run", file=sys.stderr)
        return 2
    run_rc = 0
    for run in steps["run"]:
        print(f"$ lorabench {shlex.join(run)}", flush=True)
        rc = lorabench(run)
        if rc not in (0, 1):  # 1: some runs did not end ok; the others are still worth checking
            return rc
        run_rc = run_rc or rc
    (validate,) = steps["validate"]
    print(f"$ lorabench {shlex.join(validate)}", flush=True)
    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        rc = lorabench(validate)
    if rc:
        return rc
    args.out.mkdir(parents=True, exist_ok=True)
    header = (f"lorabench {shlex.join(validate)}\n"
              f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}\n\n")
    (args.out / "plan_validation.txt").write_text(header + table.getvalue())
    print(table.getvalue(), end="")
    print(f"validation table: {args.out / 'plan_validation.txt'}")
    (report,) = steps["report"]
    print(f"$ lorabench {shlex.join(report)}", flush=True)
    rc = lorabench(report)
    print(f"measured rows -> {_shown(args.published)}", flush=True)
    rows_rc = add_rows(args.results, args.published, command)
    return rc or rows_rc or _show_published(lorabench, steps, args.published) or run_rc


def _show_published(lorabench, steps, published: Path) -> int:
    if published.resolve() != DATA.resolve():
        return 0  # plan --validate-published reads the shipped set; another file is for the caller to read
    (validate,) = steps["published"]
    print(f"$ lorabench {shlex.join(validate)}", flush=True)
    return lorabench(validate)


def _dry_run(lorabench, steps, args) -> int:
    print("cells of the memory suite on the GPU:")
    rc = 0
    for run in steps["run"]:
        print("\n".join(cell_lines(run)))
    for run in steps["run"]:
        print(f"$ lorabench {shlex.join(run + ['--dry-run'])}", flush=True)
        rc = rc or lorabench(run + ["--dry-run"])
    (validate,), (report,), (published,) = steps["validate"], steps["report"], steps["published"]
    print("then (not run with --dry-run):")
    print(f"$ lorabench {shlex.join(validate)} > {args.out / 'plan_validation.txt'}")
    print(f"$ lorabench {shlex.join(report)}")
    print(f"measured rows of {', '.join(ZERO_LEVERS)} -> {_shown(args.published)} "
          f"(the same as: python -m harness.memory_gpu --rows-only --results {args.results})")
    print(f"$ lorabench {shlex.join(published)}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
