"""`lorabench` command line.

Each sub-command lives in `harness/commands/<name>.py` with two functions, `add_parser(subparsers)`
and `run(args) -> int`. They are imported lazily only for the command that runs, so
`lorabench --help` stays fast and works without ms-swift or deepspeed installed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from harness import __version__
from harness.errors import UserError

# command name -> module under harness.commands, and a one-line summary for --help.
COMMANDS = {
    "data": ("data", "build, show or validate an image-text extraction dataset"),
    "score": ("score", "score predictions against references (CER, WER, field F1)"),
    "model": ("model", "build, pre-train or evaluate the embedded tiny model"),
    "parity": ("parity", "prove two or more frameworks are aligned, or explain the gap"),
    "run": ("run", "run a benchmark suite (one isolated worker per run)"),
    "report": ("report", "write a paper-style report from run records"),
    "export": ("export", "export run records as CSV / Parquet tables or TensorBoard runs"),
    "regress": ("regress", "compare results against a committed baseline"),
    "baseline": ("baseline", "promote current results to the committed baseline"),
    "history": ("history", "show metrics over commits"),
    "plan": ("plan", "estimate per-GPU memory for a real model: will it fit?"),
    "env": ("env", "list, create or remove the package sets a cell may train in (a spec's env)"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like UserError
        self.print_usage(sys.stderr)
        self.exit(2, f"lorabench: error: {message}\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(prog="lorabench", description="lorabench: compare LoRA fine-tuning of vision-language "
                     "models under native PEFT, ms-swift and a plain PyTorch reference.")
    parser.add_argument("--version", action="version", version=f"lorabench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module, summary) in COMMANDS.items():
        if name != only:  # listed for --help, not imported
            sub.add_parser(name, help=summary, add_help=False)
            continue
        mod = importlib.import_module(f"harness.commands.{module}")
        p = sub.add_parser(name, help=summary, description=summary)
        mod.add_parser(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # Build only the sub-parser that will run: importing every command would be slow.
    only = next((a for a in argv if a in COMMANDS), None)
    parser = build_parser(only)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0 if not argv else 2
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        print(f"lorabench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("lorabench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
