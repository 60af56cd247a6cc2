"""`make memory-gpu`: the memory suite on a GPU, then the planner checked against what it measured.

    python -m harness.memory_gpu [--dry-run] [--model DIR] [--results DIR] [--out DIR]

Each step is a lorabench command, printed before it runs:
1. `lorabench run harness/suites/memory-gpu.yaml --results RESULTS` (bf16 on `device: cuda`; the
   levers include ZeRO-2, ZeRO-3 and ZeRO-3 with optimizer and parameter offload);
2. `lorabench plan --validate RESULTS`, its table written to OUT/plan_validation.txt;
3. `lorabench report RESULTS --out OUT`.
A run that does not end ok does not stop the others: steps 2 and 3 use the runs that did, and the
exit status is 1. `--dry-run` prints the commands and the cells (through `lorabench run --dry-run`)
and trains nothing, so it works on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shlex
import sys
from pathlib import Path

from harness.paths import HARNESS_DIR, REPO_ROOT

SUITE = HARNESS_DIR / "suites" / "memory-gpu.yaml"
DEFAULT_RESULTS = Path("results/runs/memory-gpu")
DEFAULT_OUT = Path("results/reports/reference/memory-gpu")


def _shown(path: Path) -> str:
    """A path as a user would type it from the repository root."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def commands(results: Path, out: Path, model: str | None) -> dict[str, list[str]]:
    """The lorabench argument lists of the three steps."""
    run = ["run", _shown(SUITE), "--results", str(results)] + (["--set", f"model={model}"] if model else [])
    return {"run": run, "validate": ["plan", "--validate", str(results)],
            "report": ["report", str(results), "--out", str(out)]}


def cell_lines(run_args: list[str]) -> list[str]:
    """One line per cell: its lever and what sets its memory (device, precision, ZeRO, offload)."""
    from harness.config.suite import load_suite

    sets = [run_args[i + 1] for i, a in enumerate(run_args) if a == "--set"]
    _, cells = load_suite(SUITE, overrides=sets)
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
    parser.add_argument("--model", help="a local checkpoint directory instead of the tiny model")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="where the run records go")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="where plan_validation.txt and the report go")
    args = parser.parse_args(argv)
    from harness.cli import main as lorabench

    steps = commands(args.results, args.out, args.model)
    if args.dry_run:
        print("cells of the memory suite on the GPU:")
        print("\n".join(cell_lines(steps["run"])))
        print(f"$ lorabench {shlex.join(steps['run'] + ['--dry-run'])}", flush=True)
        rc = lorabench(steps["run"] + ["--dry-run"])
        print("then (not run with --dry-run):")
        print(f"$ lorabench {shlex.join(steps['validate'])} > {args.out / 'plan_validation.txt'}")
        print(f"$ lorabench {shlex.join(steps['report'])}")
        return rc
    import torch

    if not torch.cuda.is_available():
        print("memory-gpu: no CUDA device here (torch.cuda.is_available() is False); "
              "DRY_RUN=1 lists what would run", file=sys.stderr)
        return 2
    print(f"$ lorabench {shlex.join(steps['run'])}", flush=True)
    run_rc = lorabench(steps["run"])
    if run_rc not in (0, 1):  # 1: some runs did not end ok; the others are still worth checking
        return run_rc
    print(f"$ lorabench {shlex.join(steps['validate'])}", flush=True)
    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        rc = lorabench(steps["validate"])
    if rc:
        return rc
    args.out.mkdir(parents=True, exist_ok=True)
    header = (f"lorabench {shlex.join(steps['validate'])}\n"
              f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}\n\n")
    (args.out / "plan_validation.txt").write_text(header + table.getvalue())
    print(table.getvalue(), end="")
    print(f"validation table: {args.out / 'plan_validation.txt'}")
    print(f"$ lorabench {shlex.join(steps['report'])}", flush=True)
    return lorabench(steps["report"]) or run_rc


if __name__ == "__main__":
    sys.exit(main())
