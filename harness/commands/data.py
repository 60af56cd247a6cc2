"""`lorabench data`: build a dataset from its card, look at it, or validate a user's JSONL.

    lorabench data build NAME|CARD [--out DIR] [--force]
    lorabench data show NAME|DIR [--split test] [--task extract] [--n 8] [--out FILE.png]
    lorabench data validate JSONL [--task extract]
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from harness.data import cards as data
from harness.data.samples import SPLITS, Sample, TASKS, check_samples, load_samples, split_file
from harness.errors import UserError


def add_parser(parser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = sub.add_parser("build", help="render a dataset card into images + JSONL and checksum it")
    p.add_argument("card", metavar="NAME|CARD",
                   help="card name under datasets/ or a card.yaml path")
    p.add_argument("--out", metavar="DIR", help="output directory (default: <card dir>/build)")
    p.add_argument("--force", action="store_true", help="rebuild even if an identical build exists")
    p.set_defaults(_data_run=_build)

    p = sub.add_parser("show", help="print counts and write a contact sheet of samples")
    p.add_argument("dataset", metavar="NAME|DIR",
                   help="card name or path (built if needed), or a build directory")
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--task", default="extract", choices=TASKS)
    p.add_argument("--n", type=int, default=8, help="samples on the sheet (default 8)")
    p.add_argument("--out", metavar="FILE.png", help="default: <build dir>/contact_sheet.png")
    p.set_defaults(_data_run=_show)

    p = sub.add_parser("validate", help="check a JSONL file in the common multimodal format: every bad "
                                        "row with its line and reason, then a count (exit 2 if any)")
    p.add_argument("jsonl", metavar="JSONL")
    p.add_argument("--task", choices=TASKS,
                   help="task of rows without a 'task' key (default: guessed from the target)")
    p.set_defaults(_data_run=_validate)


def run(args) -> int:
    return args._data_run(args)


def _build(args) -> int:
    card = data.load_card(args.card)
    info = data.build_dataset(card, args.out, force=args.force)
    counts = ", ".join(f"{split} {n}" for split, n in info.counts.items())
    verb = "reused existing build" if info.reused else f"built in {info.seconds:.1f} s"
    print(f"{card.name}: {verb}: {counts} documents")
    print(f"path: {info.path}")
    print(f"checksum: {info.checksum}")
    if card.checksum is None:
        print(f"card has 'checksum: null': paste 'checksum: {info.checksum}' into {card.path}")
    else:
        print("checksum matches the card")
    return 0


def _resolve_build_dir(arg: str) -> Path:
    path = Path(arg)
    if path.is_dir() and ((path / data.BUILD_FILE).is_file() or any(path.glob("*.jsonl"))):
        return path
    return data.ensure_built(arg)  # a card name, card file or card directory


def _count_rows(jsonl: Path) -> int:
    with jsonl.open() as f:
        return sum(1 for line in f if line.strip())


def _show(args) -> int:
    if args.n < 1:
        raise UserError(f"--n must be at least 1, got {args.n}")
    build_dir = _resolve_build_dir(args.dataset)
    files = sorted(build_dir.glob("*.jsonl"))
    if not files:
        raise UserError(f"{build_dir}: no <split>.<task>.jsonl files")
    print(f"{build_dir}")
    for file in files:
        print(f"  {file.name:<28} {_count_rows(file):>6} rows")
    jsonl = split_file(build_dir, args.split, args.task)
    if not jsonl.is_file():
        raise UserError(f"{jsonl} does not exist; the files are listed above")
    samples = load_samples(jsonl, task=args.task)[: args.n]
    out = Path(args.out) if args.out else build_dir / "contact_sheet.png"
    try:
        name = json.loads((build_dir / data.BUILD_FILE).read_text())["card_name"]
    except (OSError, ValueError, KeyError):
        name = build_dir.name
    write_contact_sheet(samples, out, title=f"{name}: {jsonl.name}")
    print(f"contact sheet ({len(samples)} samples): {out}")
    return 0


def write_contact_sheet(samples: list[Sample], out_png: Path, title: str = "",
                        wrap_chars: int = 80) -> None:
    """One image per row at its native pixel size, with its id, kind and target printed under it."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from PIL import Image

    dpi = 100
    images = []
    for s in samples:
        with Image.open(s.image) as im:
            images.append(im.convert("RGB"))
    captions = []
    for s in samples:
        lines = [f"{s.id} ({s.kind or s.task})"]
        for part in s.target.splitlines() or [""]:
            lines += _wrap(part, wrap_chars)
        captions.append("\n".join(lines))
    width_px = max(im.width for im in images) + 40
    line_px = 16  # 9 pt x 1.2 line spacing = 10.8 pt = 15 px at dpi 100, plus a margin
    heights = []  # image, caption, image, caption, ...
    for im, cap in zip(images, captions):
        heights += [im.height, line_px * (cap.count("\n") + 1) + 12]
    title_px = 30 if title else 0
    fig = plt.figure(figsize=(width_px / dpi, (sum(heights) + title_px + 10) / dpi), dpi=dpi)
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 8 / (sum(heights) + title_px + 10), va="top")
    grid = fig.add_gridspec(len(heights), 1, height_ratios=heights, hspace=0,
                            top=1 - title_px / (sum(heights) + title_px + 10), bottom=0.005,
                            left=0.02, right=0.98)
    for i, (im, cap) in enumerate(zip(images, captions)):
        ax = fig.add_subplot(grid[2 * i])
        ax.imshow(im, interpolation="nearest", aspect="equal")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor("0.6")
        ax_text = fig.add_subplot(grid[2 * i + 1])
        ax_text.axis("off")
        ax_text.text(0, 1, cap, family="monospace", fontsize=9, va="top", ha="left",
                     color="tab:blue")
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=dpi)
    plt.close(fig)


def _wrap(text: str, width: int) -> list[str]:
    """Greedy wrap breaking after a comma or space (JSON has no spaces), never inside 2024-03."""
    lines, current = [], ""
    for piece in re.split(r"(?<=[, ])", text):
        while len(piece) > width:  # a piece longer than a line: hard split
            if current:
                lines.append(current)
                current = ""
            lines.append(piece[:width])
            piece = piece[width:]
        if current and len(current) + len(piece) > width:
            lines.append(current)
            current = ""
        current += piece
    return lines + [current]


def _validate(args) -> int:
    """Every bad row on stderr with its line and reason, then the counts; exit 2 if any row is bad."""
    samples, problems, n_rows = check_samples(args.jsonl, task=args.task)
    for problem in problems:
        print(f"lorabench: error: {problem}", file=sys.stderr)
    if not samples and not problems:
        raise UserError(f"{args.jsonl}: no samples" + (f" with task {args.task!r}" if args.task else ""))
    by_task = {}
    for s in samples:
        by_task[s.task] = by_task.get(s.task, 0) + 1
    detail = ", ".join(f"{task} {n}" for task, n in sorted(by_task.items())) or "none"
    if problems:
        print(f"{args.jsonl}: {len(problems)} of {n_rows} rows are bad (listed above); "
              f"{len(samples)} valid samples ({detail})")
        return 2
    print(f"{args.jsonl}: {len(samples)} valid samples ({detail})")
    return 0
